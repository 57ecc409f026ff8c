"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from embedpipe.errors import EmbedpipeError

STDIN = "-"  # the path that means standard input


def stdin_text() -> io.TextIOWrapper:
    """Standard input as UTF-8 text whatever the locale, lines split on '\\n' only."""
    return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")


def not_utf8(where: str | os.PathLike[str], exc: UnicodeDecodeError) -> str:
    """The one-line message for input that is not UTF-8."""
    return f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})"


def iter_jsonl(path: str | os.PathLike[str], error: type[EmbedpipeError] = EmbedpipeError) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; raises `error` on unreadable input.
    `path` "-" reads standard input.

    Lines are split on '\\n' only, so CRLF files and stray '\\r' inside strings are fine.
    """
    try:
        handle = stdin_text() if str(path) == STDIN else open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from exc
    if str(path) == STDIN:
        path = "<stdin>"
    with handle:
        try:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise error(not_utf8(path, exc)) from None


QUERY_FIELDS = ("query", "text")  # the query's field in an object line, first found wins


def iter_queries(
    path: str | os.PathLike[str], error: type[EmbedpipeError] = EmbedpipeError
) -> Iterator[tuple[int, str]]:
    """(line number, query text) for every non-blank line of a queries file, each a JSON string
    or an object with a string "query" or "text"; a blank query is an error naming its line
    (it has no meaning to search for)."""
    where = "<stdin>" if str(path) == STDIN else path
    for lineno, row in iter_jsonl(path, error):
        text = row if isinstance(row, str) else None
        if isinstance(row, dict):
            text = next((row[f] for f in QUERY_FIELDS if f in row), None)
        if not isinstance(text, str):
            raise error(f'{where}:{lineno}: expected a string or an object with a string "query" or "text" field')
        if not text.strip():
            raise error(f"{where}:{lineno}: the query is empty; a query needs something to search for")
        yield lineno, text
