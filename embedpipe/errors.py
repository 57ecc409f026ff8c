"""Exceptions that carry a message fit to show a user as-is."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 300


def quote(value: Any, limit: int = 60) -> str:
    """`repr` of a value read from a file, shortened: safe to put in a one-line message even
    when the file holds megabytes of binary where a name should be."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[: limit * 4])
    elif isinstance(value, str):
        value = value[: limit * 4]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(name: Any, limit: int = 60) -> str:
    """A name read from a file, as-is when it is short printable text, else `quote`d."""
    if isinstance(name, str) and name and name.isprintable() and len(name) <= limit:
        return name
    return quote(name, limit)


def shape_text(shape: Any) -> str:
    """An array shape as people write it, "2×768" (a 1-D shape: "768"), not a Python tuple."""
    return "×".join(str(int(d)) for d in shape) or "scalar"


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` as one printable line of at most `limit` characters."""
    if not message.isprintable():
        message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message.replace("\n", " "))
    return message if len(message) <= limit else message[: limit - 3] + "..."


class EmbedpipeError(Exception):
    """Base class: the CLI prints these without a traceback and exits 1.

    The message is forced to one printable line of at most 300 characters, so text that came
    from a file (or from a library's multi-line error) can never flood the terminal.
    """

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class ModelFileError(EmbedpipeError):
    """A GGUF/safetensors file is missing, truncated, corrupt or unsupported."""


class InputTooLongError(EmbedpipeError):
    """A text has more tokens than the model's context and truncation was not requested."""


#: argument name -> its CLI flag where that is not `--` + the name with dashes
CLI_FLAGS: dict[str, str] = {
    "batch_rows": "--batch-size",
    "n_trees": "--trees",
    "indexes": "--index",
    "models": "--model",
    "queries_file": "--queries",
    "out": "--output",
    "text_col": "--text-column",
    "id_col": "--id-column",
    "title_col": "--title-column",
}


def cli_flag(argument: str) -> str:
    """The command-line spelling of the Python argument `argument` (`chunk_tokens` -> `--chunk-tokens`)."""
    return CLI_FLAGS.get(argument) or "--" + argument.replace("_", "-")


class ArgumentError(EmbedpipeError):
    """A bad value of the named argument, or a hint to set one. `str()` names Python arguments
    (`chunk_tokens must be positive`, `pass overwrite=True`), `cli_message()` their CLI flags
    (`--chunk-tokens must be positive`, `pass --overwrite`), so one check serves the API and the
    CLI without rewriting strings.

    The message is the argument's name followed by `detail`, unless `detail` places it itself
    as `{argument}`; other arguments it mentions are written `{name}` and listed in `mentions`.
    `values` gives a value to show with a name (`on_bad="skip"` / `--on-bad skip`; True shows
    a bare flag)."""

    def __init__(
        self, argument: str, detail: str, mentions: tuple[str, ...] = (), values: dict[str, Any] | None = None
    ) -> None:
        self.argument, self.detail, self.mentions, self.values = argument, detail, mentions, dict(values or {})
        super().__init__(self.render(self._python))

    def _python(self, name: str) -> str:
        return f"{name}={self.values[name]!r}" if name in self.values else name

    def _cli(self, name: str) -> str:
        value = self.values.get(name, True)
        return cli_flag(name) if value is True else f"{cli_flag(name)} {value}"

    def render(self, spell: Any) -> str:
        detail = self.detail
        placed = "{" + self.argument + "}" in detail
        for name in (self.argument, *self.mentions):
            detail = detail.replace("{" + name + "}", spell(name))
        return detail if placed else f"{spell(self.argument)} {detail}"

    def cli_message(self) -> str:
        return one_line(self.render(self._cli))
