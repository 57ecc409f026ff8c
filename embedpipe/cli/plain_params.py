"""Option values of plain types parsed without building pydantic validators.

Typer >= 0.24 coerces every parameter through a pydantic ``TypeAdapter`` built on first use:
importing pydantic and building the adapters for one command costs more CPU than the rest of
`embedpipe search` before the index is read. Every embedpipe option is a plain ``str``, ``int``
(optionally with ``min``/``max``), ``float``, ``bool``, ``Path`` or a list of ``str``/``Path``,
whose conversion is a one-liner; ``install`` gives such parameters a converter that does
exactly that with the same messages, and leaves anything else (a custom parser, a clamp, a
choice, a file, path checks) to typer. On a typer without the lazy ``_runtime_param`` hook it
changes nothing, so the CLI behaves the same either way, only slower.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

try:  # the runtime coercion layer of typer >= 0.24
    from typer._coercion import RuntimeParam
except ImportError:  # pragma: no cover - depends on the installed typer
    RuntimeParam = None

try:
    from typer._click.exceptions import BadParameter
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import BadParameter


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


def _number(kind: type, what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        try:
            return kind(_to_str(value).strip())
        except ValueError:
            raise ValueError(f"Input should be a valid {what}, unable to parse string as {_article(what)}") from None

    return convert


def _article(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


def _path(value: Any) -> Path:
    path = value if isinstance(value, Path) else Path(_to_str(value))
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise ValueError(f"path {str(path)!r} is not readable.")
    return path


#: annotation -> converter of one command-line string (bool flags arrive as bools already)
CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    str: _to_str,
    int: _number(int, "integer"),
    float: _number(float, "number"),
    Path: _path,
}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "y": True, "on": True, "t": True}
_BOOL_WORDS |= {"0": False, "false": False, "no": False, "n": False, "off": False, "f": False, "": False}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = _to_str(value).strip().lower()
    if word not in _BOOL_WORDS:
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    return _BOOL_WORDS[word]


CONVERTERS[bool] = _bool

# settings under which typer does more than convert: such parameters keep typer's own coercion
_PATH_CHECKS = ("exists", "writable", "resolve_path", "allow_dash", "path_type")


def _plain(info: Any) -> bool:
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", False):
        return False
    if getattr(info, "formats", None):
        return False
    if any(getattr(info, name, None) for name in _PATH_CHECKS):
        return False
    return getattr(info, "file_okay", True) and getattr(info, "dir_okay", True)


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        """Converts one value, or each value of a multi-value parameter, with ``convert``."""

        convert: Callable[[Any], Any] = _to_str
        low: float | None = None
        high: float | None = None

        def _one(self, value: Any) -> Any:
            out = self.convert(value)
            if self.low is not None and out < self.low:
                raise ValueError(f"Input should be greater than or equal to {self.low}")
            if self.high is not None and out > self.high:
                raise ValueError(f"Input should be less than or equal to {self.high}")
            return out

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if param.multiple or param.nargs == -1:
                    return [self._one(v) for v in value]
                return self._one(value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None


def plain_runtime_param(descriptor: Any) -> Any | None:
    """A ``PlainRuntimeParam`` for ``descriptor`` (typer's resolved type of one parameter), or
    None when its type or settings need typer's own coercion."""
    if RuntimeParam is None or getattr(descriptor, "file_annotation", None) is not None:
        return None
    info, annotation = descriptor.parameter_info, descriptor.annotation
    if not _plain(info):
        return None
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
        if annotation is bool:
            return None
    convert = CONVERTERS.get(annotation)
    if convert is None:
        return None
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if (low is not None or high is not None) and annotation not in (int, float):
        return None
    return PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation, convert=convert, low=low, high=high)


def install_param(param: Any) -> Any:
    """Give ``param`` (or nothing, for None) the plain converter when its type allows; returns ``param``."""
    if getattr(param, "_runtime_param", "absent") is not None:
        return param  # not typer's lazy hook, or already resolved
    descriptor = getattr(param, "type_descriptor", None)
    runtime = plain_runtime_param(descriptor) if descriptor is not None else None
    if runtime is not None:
        param._runtime_param = runtime
    return param


#: annotation -> the metavar an option of that type shows in --help when it names none
METAVARS: dict[Any, str] = {str: "TEXT", int: "N", float: "NUMBER", Path: "PATH"}


def plain_help(param: Any) -> Any:
    """``param``'s --help entry without typer's type labels (``<str>``, ``<int range>``,
    ``<list[str]>``): an option without a metavar gets one from ``METAVARS``, an argument shows
    its metavar (default: its name in capitals) alone. Returns ``param``."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "is_flag", False) or getattr(param, "count", False):
        return param
    if getattr(param, "param_type_name", "") == "argument":
        if param.metavar is None:
            param.metavar = param.name.upper()
        param.display_type_rich = lambda ctx: None
        # the usage line as people write it: INDEX [QUERY...] (typer writes {INDEX} [QUERY...]...)
        shown = param.metavar if param.nargs == 1 or param.metavar.endswith("...") else f"{param.metavar}..."
        param._usage_display_name = lambda: shown if param.required else f"[{shown}]"
        return param
    if param.metavar is None:
        annotation = descriptor.annotation
        if get_origin(annotation) is list:
            (annotation,) = get_args(annotation) or (None,)
        label = METAVARS.get(annotation)
        if label is not None:
            param.metavar = label
    return param


def install(command: Any) -> Any:
    """Give every plain parameter of ``command`` (and of its subcommands, and the ``--help``
    option each builds per run) the plain converter and a --help entry without type labels;
    returns ``command``."""
    for sub in getattr(command, "commands", {}).values():
        install(sub)
    for param in getattr(command, "params", ()):
        install_param(param)
        plain_help(param)
    make_help = getattr(command, "get_help_option", None)
    if make_help is not None and "get_help_option" not in vars(command):
        command.get_help_option = lambda ctx: install_param(make_help(ctx))
    return command
