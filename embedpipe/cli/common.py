"""The CLI's one grammar: options that recur across commands, and reading inputs (`-` = stdin).

Every command that takes one of these takes it through the factory here, so the flags are the
same everywhere: `-m/--model`, `-i/--input`, `-o/--output`, `-d/--dim`, `--any-dim`, `-k`,
`-t/--task`, `--threads`, `--backend`, and `--json` (print JSON to stdout; files go through -o).
`tests/cli/test_grammar.py` checks every command against `CANONICAL_FLAGS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from embedpipe.errors import EmbedpipeError
from embedpipe.jsonl import STDIN, iter_jsonl, not_utf8, stdin_text


def model_help(default: str = "EmbeddingGemma Q8_0, pulled on first use") -> str:
    """Help of a --model option: what it takes, and the command's default."""
    return (
        "GGUF model file or registered model name, e.g. all-minilm-l6-v2 or all-minilm-l6-v2:f32 "
        f"(`embedpipe model list`; default: {default})."
    )


MODEL_OPTION_HELP = model_help()
BACKEND_OPTION_HELP = "Matmul backend: auto (JIT kernels when available), jit, or numpy (reference)."
THREADS_OPTION_HELP = "Threads for the matmul kernels (default: the cores this process may use; env EMBEDPIPE_THREADS)."
TASKS_HELP = "query, document, sentence_similarity, classification, clustering, code_retrieval, none…"

# parameter name -> the flags it has in every command that takes it
CANONICAL_FLAGS: dict[str, tuple[str, ...]] = {
    "model": ("-m", "--model"),
    "input_file": ("-i", "--input"),
    "output": ("-o", "--output"),
    "dim": ("-d", "--dim"),
    "any_dim": ("--any-dim",),
    "k": ("-k",),
    "task": ("-t", "--task"),
    "threads": ("--threads",),
    "backend": ("--backend",),
    "as_json": ("--json",),
    "cache_dir": ("--cache-dir",),
    "cache_max_bytes": ("--cache-max-bytes",),
}
CACHE_DIR_HELP = (
    "Embedding cache directory, shared by ingest, serve and eval (default: user cache dir; env EMBEDPIPE_CACHE_DIR)."
)
CACHE_MAX_BYTES_HELP = "Bound the cache file, e.g. 2GB: least recently used entries are evicted (default: unbounded)."


def model_option(help: str = MODEL_OPTION_HELP, default: Any = None) -> Any:
    return typer.Option(default, *CANONICAL_FLAGS["model"], help=help, metavar="MODEL")


def input_option(help: str = 'JSONL file, one {"text": ..., "title": ...} per line; - reads stdin.') -> Any:
    return typer.Option(None, *CANONICAL_FLAGS["input_file"], help=help, metavar="FILE")


def output_option(help: str, default: Any = None) -> Any:
    return typer.Option(default, *CANONICAL_FLAGS["output"], help=help, metavar="PATH")


def dim_option(help: str = "Output dimension: one of the model's Matryoshka widths (default: full).") -> Any:
    return typer.Option(None, *CANONICAL_FLAGS["dim"], help=help, metavar="N")


def any_dim_option() -> Any:
    return typer.Option(
        False, *CANONICAL_FLAGS["any_dim"], help="Allow a --dim that is not one of the model's Matryoshka widths."
    )


def k_option(default: int = 10) -> Any:
    return typer.Option(default, *CANONICAL_FLAGS["k"], min=1, help="Results per query.", metavar="K")


def task_option(default: str, help: str | None = None) -> Any:
    return typer.Option(default, *CANONICAL_FLAGS["task"], help=help or f"Task prompt: {TASKS_HELP}", metavar="TASK")


def threads_option() -> Any:
    return typer.Option(None, *CANONICAL_FLAGS["threads"], min=1, help=THREADS_OPTION_HELP, metavar="N")


def backend_option() -> Any:
    return typer.Option("auto", *CANONICAL_FLAGS["backend"], help=BACKEND_OPTION_HELP, metavar="NAME")


def cache_dir_option(help: str = CACHE_DIR_HELP) -> Any:
    return typer.Option(None, *CANONICAL_FLAGS["cache_dir"], help=help, metavar="DIR")


def cache_max_bytes_option() -> Any:
    return typer.Option(None, *CANONICAL_FLAGS["cache_max_bytes"], help=CACHE_MAX_BYTES_HELP, metavar="SIZE")


def progress_option() -> Any:
    """--progress/--no-progress, as every long-running command takes it."""
    return typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr.")


def json_option(help: str = "Print JSON to stdout instead of text.") -> Any:
    return typer.Option(False, *CANONICAL_FLAGS["as_json"], help=help)


EMPTY_TEXT = "is empty; every text needs something to embed (an empty one has no meaning to compare)"


def read_jsonl_texts(path: Path | str, allow_empty: bool = False) -> tuple[list[str], list[str | None]]:
    """Texts and optional titles from a JSONL file ("-": stdin) of {"text": ..., "title": ...}.

    A blank text is refused unless `allow_empty` or the row has a title (which is then all there is
    to embed).
    """
    texts: list[str] = []
    titles: list[str | None] = []
    for lineno, row in iter_jsonl(path):
        where = "<stdin>" if str(path) == STDIN else path
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise EmbedpipeError(f'{where}:{lineno}: expected an object with a string "text" field')
        title = row.get("title")
        if title is not None and not isinstance(title, str):
            raise EmbedpipeError(f'{where}:{lineno}: "title" must be a string')
        if not allow_empty and not row["text"].strip() and not (title or "").strip():
            raise EmbedpipeError(f'{where}:{lineno}: "text" {EMPTY_TEXT}')
        texts.append(row["text"])
        titles.append(title or None)  # an empty title is no title, as in the corpus readers
    return texts, titles


def stdin_lines(allow_empty: bool = False) -> list[str]:
    """Lines of standard input, one text each, so row i of the output is line i of the input.

    Blank lines are kept with `allow_empty`, otherwise the first one is an error naming it (input
    with nothing but blank lines reads as no lines).
    """
    with stdin_text() as handle:
        try:
            lines = [line.rstrip("\r\n") for line in handle]
        except UnicodeDecodeError as exc:
            raise EmbedpipeError(not_utf8("<stdin>", exc)) from None
    if not any(line.strip() for line in lines):
        return []
    if not allow_empty:
        refuse_empty(lines, lambda i: f"stdin line {i + 1}")
    return lines


def refuse_empty(texts: list[str], name_of: Any) -> None:
    """Raise for the first blank text, named by `name_of(position)`."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise EmbedpipeError(f"{name_of(i)} {EMPTY_TEXT}")


def texts_from_args(
    texts: list[str] | None, input_file: Path | str | None, what: str = "TEXT", allow_empty: bool = False
) -> tuple[list[str], list[str | None]]:
    """Positional texts (a lone `-`: one text per stdin line) or --input JSONL (`-`: stdin).

    Blank texts are refused unless `allow_empty`, naming their argument or line, so no input row
    is silently dropped and row i of the output is always input i.
    """
    if input_file is not None and texts:
        raise typer.BadParameter(f"give {what} arguments or -i/--input, not both")
    if input_file is not None:
        items, titles = read_jsonl_texts(input_file, allow_empty)
        where = "stdin" if str(input_file) == STDIN else str(input_file)
    elif texts == [STDIN]:
        items, where = stdin_lines(allow_empty), "stdin"
        titles = [None] * len(items)
    elif texts:
        if not allow_empty:
            refuse_empty(list(texts), lambda i: f"{what} argument {i + 1}")
        return list(texts), [None] * len(texts)
    else:
        raise typer.BadParameter(f"give {what} arguments, - (one per stdin line) or -i/--input F.jsonl")
    if not items:
        raise EmbedpipeError(f"{where}: no texts to read; give at least one line")
    return items, titles
