"""The reader contract: one input file as record batches from any global row, and its errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from embedpipe.errors import EmbedpipeError

BAD_COLUMN = "__embedpipe_bad__"  # per-row reason a reader already knows (JSONL: invalid JSON, non-string)


class InputError(EmbedpipeError):
    """An input file is missing, unreadable or lacks a requested column."""


@dataclass
class Source:
    """One input file; subclasses stream its rows from `start`."""

    path: Path

    def is_empty(self) -> bool:
        """A zero-byte file is zero rows in every format (no columns to check, nothing to read)."""
        try:
            return self.path.stat().st_size == 0
        except OSError:
            return False

    def num_rows(self) -> int | None:
        return None

    def schema(self) -> pa.Schema:
        """Column names and types; an unreadable file or non-UTF-8 column names are InputError."""
        try:
            schema = self._schema()
            _ = schema.names  # names are decoded here: invalid UTF-8 raises now, not mid-job
            return schema
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path}: cannot read the columns ({type(exc).__name__}: {exc})") from None

    def _schema(self) -> pa.Schema:
        raise NotImplementedError

    def stream(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        """`_stream` with empty files read as no rows and reader failures as InputError."""
        if self.is_empty():
            return
        try:
            yield from self._stream(columns, rows)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: cannot read ({type(exc).__name__}: {exc})") from None

    def batches(self, columns: list[str], start: int, rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches with `columns` (plus BAD_COLUMN when the reader adds it) from row `start`."""
        skip = start
        for batch in self.stream(columns, rows):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip) if skip else batch
            skip = 0

    def _stream(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def check_columns(self, columns: list[str]) -> None:
        if self.is_empty():
            return
        names = set(self.schema().names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(f"{self.path}: no column(s) {missing}; columns are {sorted(names)}")
