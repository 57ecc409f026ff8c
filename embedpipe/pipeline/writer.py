"""Output dataset: Parquet part files written atomically, with the embedpipe schema metadata.

A part is first written as a hidden temp file (`.part-NNNNNN.parquet.tmp`), fsynced, then renamed
into place (`part-NNNNNN.parquet`), so a reader globbing `part-*.parquet` never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import embedpipe
from embedpipe.errors import EmbedpipeError

PART_GLOB = "part-*.parquet"
TEMP_GLOB = ".part-*.tmp*"


def _quantize_int8(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: q = round(x / scale), scale = max|x| / 127 (x ≈ q * scale)."""
    scale = np.abs(vecs).max(axis=1) / 127.0 if len(vecs) else np.zeros(0, np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(vecs / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


# dtype -> (arrow value type, encoder: float32 (n, dim) -> (values, scale or None))
DTYPE_TABLE: dict[str, tuple[pa.DataType, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]]] = {
    "float32": (pa.float32(), lambda v: (v.astype(np.float32, copy=False), None)),
    "float16": (pa.float16(), lambda v: (v.astype(np.float16), None)),
    "int8": (pa.int8(), _quantize_int8),
}


def id_type(source_type: pa.DataType | None) -> pa.DataType:
    """int64 for integer ids (and the default row number), string for text-like ids."""
    if source_type is None or pa.types.is_integer(source_type):
        return pa.int64()
    if pa.types.is_dictionary(source_type):
        return id_type(source_type.value_type)
    if pa.types.is_string(source_type) or pa.types.is_large_string(source_type) or pa.types.is_binary(source_type) \
            or pa.types.is_large_binary(source_type) or pa.types.is_string_view(source_type):
        return pa.string()
    raise EmbedpipeError(f"id column has type {source_type}; use an integer or string column")


def output_schema(id_t: pa.DataType, keep: list[pa.Field], dim: int, dtype: str, metadata: dict[str, str]) -> pa.Schema:
    value_type = DTYPE_TABLE[dtype][0]
    fields = [
        pa.field("id", id_t, nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("token_end", pa.int32(), nullable=False),
        *keep,
        pa.field("embedding", pa.list_(pa.field("item", value_type, nullable=False), dim), nullable=False),
    ]
    if dtype == "int8":
        fields.append(pa.field("scale", pa.float32(), nullable=False))
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def schema_metadata(model_sha256: str, model_path: str, task: str, dim: int, dtype: str) -> dict[str, str]:
    return {
        "embedpipe.model_sha256": model_sha256,
        "embedpipe.model_path": model_path,
        "embedpipe.task": task,
        "embedpipe.dim": str(dim),
        "embedpipe.normalized": "true",
        "embedpipe.dtype": dtype,
        "embedpipe.version": embedpipe.__version__,
    }


def embedding_columns(vecs: np.ndarray, schema: pa.Schema, dtype: str) -> dict[str, pa.Array]:
    values, scale = DTYPE_TABLE[dtype][1](vecs)
    flat = pa.array(values.reshape(-1), type=DTYPE_TABLE[dtype][0])
    cols = {"embedding": pa.FixedSizeListArray.from_arrays(flat, type=schema.field("embedding").type)}
    if scale is not None:
        cols["scale"] = pa.array(scale, pa.float32())
    return cols


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


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
