"""Parquet and Arrow IPC/Feather inputs: row counts known, whole files and row groups skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.pipeline.readers_source import InputError, Source


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
