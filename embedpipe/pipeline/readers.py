"""Streaming readers: Parquet, Arrow IPC/Feather, JSONL and CSV as record batches in bounded memory.

Every row of the corpus has a global row number (its position across all input files in sorted
order); resume and the Ray engine address work as ranges of those numbers, so each reader can
start at an arbitrary row. Parquet and IPC know their row counts and skip whole files/row groups;
JSONL and CSV are read and dropped up to the start row.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from embedpipe.errors import EmbedpipeError

BAD_COLUMN = "__embedpipe_bad__"  # per-row reason a reader already knows (JSONL: invalid JSON, non-string)
JSONL_BLOCK_BYTES = 1 << 20


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


class ParquetSource(Source):
    def _file(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: not a readable Parquet file ({exc})") from exc

    def num_rows(self) -> int:
        return 0 if self.is_empty() else self._file().metadata.num_rows

    def _schema(self) -> pa.Schema:
        return pa.schema([]) if self.is_empty() else self._file().schema_arrow

    def batches(self, columns: list[str], start: int, rows: int) -> Iterator[pa.RecordBatch]:
        if self.is_empty():
            return
        try:
            yield from self._row_groups(columns, start, rows)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: cannot read ({type(exc).__name__}: {exc})") from None

    def _row_groups(self, columns: list[str], start: int, rows: int) -> Iterator[pa.RecordBatch]:
        # Skip whole row groups by metadata, then stream the rest with iter_batches (memory stays at
        # one batch; Dataset.to_batches is known to accumulate).
        pf = self._file()
        meta = pf.metadata
        first, skip = 0, start
        while first < meta.num_row_groups and skip >= meta.row_group(first).num_rows:
            skip -= meta.row_group(first).num_rows
            first += 1
        if first >= meta.num_row_groups:
            return
        groups = list(range(first, meta.num_row_groups))
        for batch in pf.iter_batches(batch_size=rows, row_groups=groups, columns=columns, use_threads=False):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip) if skip else batch
            skip = 0


class IpcSource(Source):
    def _reader(self):
        try:
            return pa.ipc.open_file(pa.memory_map(str(self.path)))
        except (OSError, pa.ArrowException):
            try:
                return pa.ipc.open_stream(pa.memory_map(str(self.path)))
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{self.path}: not an Arrow IPC/Feather file ({exc})") from None

    def num_rows(self) -> int | None:
        if self.is_empty():
            return 0
        reader = self._reader()
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            try:
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{self.path}: not an Arrow IPC/Feather file ({exc})") from None
        return None

    def _schema(self) -> pa.Schema:
        return pa.schema([]) if self.is_empty() else self._reader().schema

    def _stream(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        reader = self._reader()
        it = (
            (reader.get_batch(i) for i in range(reader.num_record_batches))
            if isinstance(reader, pa.ipc.RecordBatchFileReader)
            else iter(reader)
        )
        for batch in it:
            # IPC buffers are mapped as written: a corrupt offset would be followed by native
            # code later, so every batch is validated in full before anything reads it
            batch.validate(full=True)
            batch = batch.select(columns)
            for off in range(0, batch.num_rows, rows):
                yield batch.slice(off, rows)


class CsvSource(Source):
    def _open(self, columns: list[str] | None, text_like: list[str]):
        types = {c: pa.large_binary() for c in text_like}  # validate UTF-8 per row, not per file
        try:
            return pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types),
            )
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: cannot read as CSV ({exc})") from exc

    def _schema(self) -> pa.Schema:
        return pa.schema([]) if self.is_empty() else self._open(None, []).schema

    def _stream(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        reader = self._open(columns, [columns[0]])
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowException as exc:
                raise InputError(f"{self.path}: CSV parse error ({exc})") from exc
            for off in range(0, batch.num_rows, rows):
                yield batch.slice(off, rows)


class JsonlSource(Source):
    """JSON Lines in blocks of whole lines: pyarrow parses a block; when it refuses (mixed types,
    lone surrogates, a broken line) that block is parsed line by line and the offending rows get
    a reason in BAD_COLUMN instead of failing the whole file."""

    def _blocks(self) -> Iterator[bytes]:
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read ({exc.strerror})") from exc
        with handle:
            rest = b""
            while True:
                data = handle.read(JSONL_BLOCK_BYTES)
                if not data:
                    break
                data = rest + data
                cut = data.rfind(b"\n") + 1
                block, rest = data[:cut], data[cut:]
                if block:
                    yield block
            if rest.strip():
                yield rest + b"\n"

    def is_empty(self) -> bool:
        """No line but blank ones: zero rows, like a header-only CSV."""
        return not any(self._lines(block) for block in self._blocks())

    def _schema(self) -> pa.Schema:
        for block in self._blocks():
            return _tolerant_schema(self, block)
        return pa.schema([])

    @staticmethod
    def _lines(block: bytes) -> list[bytes]:
        return [line for line in block.split(b"\n") if line.strip()]

    def _fast(self, block: bytes, schema: pa.Schema | None) -> pa.Table:
        opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore" if schema else "infer")
        return pajson.read_json(io.BytesIO(block), parse_options=opts)

    def _slow(self, block: bytes, columns: list[str], schema: pa.Schema) -> pa.RecordBatch:
        text_col = columns[0]
        values: dict[str, list] = {c: [] for c in columns}
        bad: list[str | None] = []
        for line in self._lines(block):
            row, reason = _parse_line(line)
            if reason is None:
                text = row.get(text_col)
                reason = None if text is None or isinstance(text, str) else "non_string"
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        reason = "invalid_utf8"
            bad.append(reason)
            for c in columns:
                v = row.get(c)
                values[c].append(None if reason and c == text_col else v)
        arrays = []
        for c in columns:
            try:
                arrays.append(pa.array(values[c], type=schema.field(c).type))
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise InputError(f"{self.path}: column {c!r} has values of mixed types ({exc})") from exc
        return pa.RecordBatch.from_arrays(arrays + [pa.array(bad, pa.string())], names=columns + [BAD_COLUMN])

    def _stream(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        schema: pa.Schema | None = None
        for block in self._blocks():
            if schema is None:
                schema = _jsonl_schema(self, block, columns)
            try:
                table = self._fast(block, schema).select(columns)
                if table.num_rows != len(self._lines(block)):
                    raise pa.ArrowInvalid("row count differs")
                batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
                if batch is None:
                    continue
                batch = batch.append_column(BAD_COLUMN, pa.nulls(batch.num_rows, pa.string()))
            except pa.ArrowException:
                batch = self._slow(block, columns, schema)
            for off in range(0, batch.num_rows, rows):
                yield batch.slice(off, rows)


def _tolerant_schema(source: JsonlSource, block: bytes) -> pa.Schema:
    """Column types of a block: pyarrow's inference, or per column when the block has mixed types."""
    try:
        return source._fast(block, None).schema
    except pa.ArrowException:
        pass
    rows = [r for r in (_json_object(line) for line in source._lines(block)) if r is not None]
    names = list(dict.fromkeys(k for r in rows for k in r))
    fields = []
    for name in names:
        try:
            t = pa.array([r.get(name) for r in rows]).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            t = pa.string()
        fields.append(pa.field(name, pa.string() if pa.types.is_null(t) else t))
    return pa.schema(fields)


def _jsonl_schema(source: JsonlSource, block: bytes, columns: list[str]) -> pa.Schema:
    """Column types fixed from the first block (text as string) so every block casts alike."""
    inferred = _tolerant_schema(source, block)
    fields = [pa.field(columns[0], pa.string())]
    for c in columns[1:]:
        t = inferred.field(c).type if c in inferred.names else pa.string()
        fields.append(pa.field(c, pa.string() if pa.types.is_null(t) else t))
    return pa.schema(fields)


def _parse_line(line: bytes) -> tuple[dict, str | None]:
    """One JSONL line as (object, None) or ({}, reason): invalid_utf8, invalid_json, not_an_object."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "invalid_utf8"
    try:
        row = json.loads(text)
    except (ValueError, RecursionError):
        return {}, "invalid_json"
    return (row, None) if isinstance(row, dict) else ({}, "not_an_object")


def _json_object(line: bytes) -> dict | None:
    row, reason = _parse_line(line)
    return None if reason else row


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
    """Files, directories (recursively, known extensions, skipping _ and . names) and globs."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if any(ch in item for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not found:
                raise InputError(f"{item}: the pattern matches no files")
            paths.extend(found)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in SOURCE_TYPES
                and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
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
