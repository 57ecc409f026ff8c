"""Streaming readers: Parquet, Arrow IPC/Feather, JSONL and CSV as record batches in bounded memory.

Every row of the corpus has a global row number (its position across all input files in sorted
order); resume and the Ray engine address work as ranges of those numbers, so each reader can
start at an arbitrary row. Parquet and IPC know their row counts and skip whole files/row groups;
JSONL and CSV are read and dropped up to the start row.

The reader of each format is a `Source` (`readers_source`: the contract and its errors) in
`readers_arrow` (Parquet, IPC) or `readers_text` (CSV, JSONL); `SOURCE_TYPES` maps file
extensions to them, and `Corpus` numbers rows across the ordered files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from embedpipe.pipeline.readers_arrow import IpcSource, ParquetSource
from embedpipe.pipeline.readers_source import BAD_COLUMN, InputError, Source
from embedpipe.pipeline.readers_text import CsvSource, JsonlSource

__all__ = ["BAD_COLUMN", "Corpus", "CsvSource", "InputError", "IpcSource", "JsonlSource", "ParquetSource", "Source"]


SOURCE_TYPES: dict[str, type[Source]] = {
    ".parquet": ParquetSource,
    ".pq": ParquetSource,
    ".arrow": IpcSource,
    ".feather": IpcSource,
    ".ipc": IpcSource,
    ".arrows": IpcSource,
    ".jsonl": JsonlSource,
    ".ndjson": JsonlSource,
    ".json": JsonlSource,
    ".csv": CsvSource,
}


def _source_for(path: Path) -> Source:
    kind = SOURCE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown input format {path.suffix!r}; known: {', '.join(sorted(SOURCE_TYPES))}")
    return kind(path)


def resolve_inputs(inputs: list[str]) -> list[Source]:
    """Files, directories (recursively, known extensions, skipping _ and . names and ingest
    outputs) and globs."""
    from embedpipe.pipeline.manifest import MANIFEST

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if any(ch in item for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not found:
                raise InputError(f"{item}: the pattern matches no files")
            paths.extend(found)
        elif p.is_dir():
            listing = list(p.rglob("*"))
            # ingest outputs inside the input tree (a job manifest beside them) are not input
            outputs = {f.parent for f in listing if f.name == MANIFEST and f.parent != p}
            found = sorted(
                f
                for f in listing
                if f.is_file()
                and f.suffix.lower() in SOURCE_TYPES
                and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
                and not outputs.intersection(f.parents)
            )
            if not found:
                raise InputError(f"{p}: the directory holds no input files ({', '.join(sorted(SOURCE_TYPES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"{item}: no such file or directory")
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
    return [_source_for(p) for p in unique]


@dataclass
class Corpus:
    """The ordered input files; rows are numbered globally across them."""

    sources: list[Source]

    @classmethod
    def open(cls, inputs: list[str], columns: list[str]) -> Corpus:
        corpus = cls(resolve_inputs(inputs))
        for src in corpus.sources:
            src.check_columns(columns)
        return corpus

    def total_rows(self) -> int | None:
        counts = [s.num_rows() for s in self.sources]
        return None if any(c is None for c in counts) else sum(counts)

    def identity(self) -> list[dict]:
        """What resume compares to detect changed inputs."""
        out = []
        for s in self.sources:
            st = s.path.stat()
            out.append({"path": str(s.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def batches(
        self, columns: list[str], start: int = 0, rows: int = 1024
    ) -> Iterator[tuple[int, Path, pa.RecordBatch]]:
        """(global row of the batch's first row, file, batch) from global row `start` to the end."""
        base = 0
        for src in self.sources:
            n = src.num_rows()
            if n is not None and base + n <= start:
                base += n
                continue
            if n is not None:
                local = max(0, start - base)
                for row, batch in _numbered(src.batches(columns, local, rows), base + local):
                    yield row, src.path, batch
                base += n
                continue
            for batch in src.stream(columns, rows):
                lo, base = base, base + batch.num_rows
                if base <= start:
                    continue
                if lo < start:
                    batch, lo = batch.slice(start - lo), start
                yield lo, src.path, batch


def _numbered(batches: Iterator[pa.RecordBatch], first: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    row = first
    for batch in batches:
        yield row, batch
        row += batch.num_rows
