"""Embeddings made by other tools: `.npy`, Parquet or Arrow IPC files with an embedding column.

`build-index` takes these as well as `ingest` output. A Parquet/Arrow file needs an embedding
column (fixed-size or variable list of floats, all rows the same width) and an id column
(`--id-column`, default ``id``; row numbers when the file has none); a `.npy` file is a 2-D
float array whose rows get ids 0..n-1. Vectors must be unit length (every index scores by
inner product) unless `normalize` is set; a NaN or infinite component is an error. The index
records "no model": text queries then need `search --model`, vector queries need nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from embedpipe.errors import shape_text
from embedpipe.indexes.base import NORM_BLOCK, IndexMeta, normalize_rows
from embedpipe.pipeline.dataset import EmbeddingsDirError

UNIT_TOLERANCE = 1e-3
DEFAULT_ID_COLUMN = "id"  # read when the file has it and no other column is named


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        with pa.memory_map(str(path)) as src:
            try:
                return ipc.open_file(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return ipc.open_stream(src).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise EmbeddingsDirError(f"{path}: unreadable {path.suffix or 'Arrow'} file ({exc})") from None


def _column_vectors(table: pa.Table, column: str, path: Path) -> np.ndarray:
    if column not in table.column_names:
        raise EmbeddingsDirError(
            f"{path}: no column {column!r} (columns: {', '.join(table.column_names)}); pass --embedding-column"
        )
    col = table.column(column).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise EmbeddingsDirError(
                f"{path}: column {column!r} holds vectors of different lengths ({lengths.min()}…{lengths.max()})"
            )
        width = int(lengths[0]) if len(lengths) else 0
    else:
        raise EmbeddingsDirError(f"{path}: column {column!r} has type {col.type}; expected a list of floats")
    if col.null_count:
        raise EmbeddingsDirError(f"{path}: column {column!r} has {col.null_count} null rows")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if flat.dtype.kind not in "fiu":
        raise EmbeddingsDirError(f"{path}: column {column!r} holds {flat.dtype}, not numbers")
    return flat.astype(np.float32, copy=False).reshape(-1, width)


def _finite_and_norms(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row has a NaN/inf component, row norm) per row, in row blocks: whole-array
    expressions would hold full-size temporaries (a bool mask, x·x) beside the vectors."""
    bad, norms = np.zeros(len(vecs), bool), np.zeros(len(vecs), np.float32)
    for lo in range(0, len(vecs), NORM_BLOCK):
        part = vecs[lo : lo + NORM_BLOCK]
        bad[lo : lo + len(part)] = ~np.isfinite(part).all(axis=1)
        norms[lo : lo + len(part)] = np.linalg.norm(part, axis=1)
    return bad, norms


def _refuse_duplicate_ids(ids: list | np.ndarray, path: Path, column: str) -> None:
    values, counts = np.unique(
        np.asarray(ids if isinstance(ids, np.ndarray) else [str(i) for i in ids]), return_counts=True
    )
    if len(values) < len(ids):
        first = int(np.argmax(counts > 1))
        raise EmbeddingsDirError(
            f"{path}: column {column!r} holds {len(ids) - len(values)} repeated id(s) (id {values[first].item()!r} "
            f"appears {counts[first]} times); a search returns ids, so they must be unique"
        )


def read_foreign(
    path: str | os.PathLike,
    id_column: str | None = None,
    embedding_column: str = "embedding",
    normalize: bool = False,
) -> tuple[np.ndarray, list | np.ndarray, IndexMeta]:
    """(unit vectors, ids, index metadata recording "no model") from a `.npy`, `.parquet` or
    Arrow IPC file made by another tool. Ids come from `id_column` (which must then exist), by
    default from a column named ``id`` when there is one, else they are row numbers; they must
    be unique, as a search returns them."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsDirError(f"{path}: no such file")
    ids: list | np.ndarray
    if path.suffix == ".npy":
        try:
            vecs = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise EmbeddingsDirError(f"{path}: unreadable .npy file ({exc})") from None
        if vecs.ndim != 2 or vecs.dtype.kind not in "fiu":
            raise EmbeddingsDirError(f"{path}: expected a 2-D float array, got {vecs.dtype} {shape_text(vecs.shape)}")
        vecs = vecs.astype(np.float32, copy=False)
        ids = np.arange(len(vecs), dtype=np.int64)
    else:
        table = _read_table(path)
        vecs = _column_vectors(table, embedding_column, path)
        if id_column is not None and id_column not in table.column_names:
            raise EmbeddingsDirError(f"{path}: no id column {id_column!r} (columns: {', '.join(table.column_names)})")
        named = id_column or DEFAULT_ID_COLUMN
        if named in table.column_names:
            ids = table.column(named).to_pylist()
            if any(i is None for i in ids):
                raise EmbeddingsDirError(f"{path}: column {named!r} has null ids")
            if all(isinstance(i, int) for i in ids):
                ids = np.asarray(ids, np.int64)
            _refuse_duplicate_ids(ids, path, named)
        else:
            ids = np.arange(len(vecs), dtype=np.int64)
    if len(vecs) == 0 or vecs.shape[1] == 0:
        raise EmbeddingsDirError(f"{path}: no vectors")
    bad, norms = _finite_and_norms(vecs)
    if bad.any():
        raise EmbeddingsDirError(
            f"{path}: row {int(np.flatnonzero(bad)[0])} has a NaN or infinite component ({int(bad.sum())} such rows)"
        )
    if normalize:
        if (norms == 0).any():
            raise EmbeddingsDirError(
                f"{path}: row {int(np.flatnonzero(norms == 0)[0])} is all zeros and cannot be normalized"
            )
        vecs = normalize_rows(vecs, in_place=True)  # read here, so ours: no second copy
    elif (np.abs(norms - 1) > UNIT_TOLERANCE).any():
        worst = int(np.argmax(np.abs(norms - 1)))
        raise EmbeddingsDirError(
            f"{path}: vectors are not unit length (row {worst} has norm {norms[worst]:.4g}); pass --normalize"
        )
    meta = IndexMeta(
        source_dim=vecs.shape[1],
        model_sha256="",
        model_path="",
        task="",
        extra={"source": str(path.resolve()), "model": "none"},
    )
    return vecs, ids, meta
