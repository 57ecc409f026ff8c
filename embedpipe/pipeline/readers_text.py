"""CSV and JSONL inputs: streamed in blocks, read and dropped up to the start row; a bad JSONL
line becomes a per-row reason (`BAD_COLUMN`) instead of failing the file."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from embedpipe.pipeline.readers_source import BAD_COLUMN, InputError, Source

JSONL_BLOCK_BYTES = 1 << 20


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
