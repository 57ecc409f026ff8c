"""Atomic Parquet part files of the output dataset (its layout: `dataset.py`).

A part is first written as a hidden temp file (`.part-NNNNNN.parquet.tmp`), fsynced, then renamed
into place (`part-NNNNNN.parquet`), so a reader globbing `part-*.parquet` never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.pipeline.dataset import part_name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """Streams row groups into a temp file; `commit()` makes it visible atomically."""

    def __init__(self, out_dir: Path, index: int, schema: pa.Schema):
        self.final = out_dir / part_name(index)
        self.temp = out_dir / f".{part_name(index)}.tmp{os.getpid()}"
        self.schema = schema
        self.rows = 0
        self._writer = pq.ParquetWriter(str(self.temp), schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.replace_schema_metadata(self.schema.metadata))
            self.rows += table.num_rows

    def commit(self) -> Path:
        self._writer.close()
        with open(self.temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.temp.unlink(missing_ok=True)
