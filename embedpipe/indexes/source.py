"""Read an `ingest` output directory (part-*.parquet) into vectors, ids, kept columns, metadata.

Ids: stored exactly as `ingest` wrote them (int64 or string). A document split into several
chunks therefore appears once per chunk under the same id; the chunk number is kept as the
text column ``chunk`` when any row has chunk > 0, so `search` can show which piece matched.
Embeddings may be float32, float16 or int8 + per-row ``scale``; all are read as float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import IndexMeta

PART_GLOB = "part-*.parquet"
STRUCTURAL = {"id", "chunk", "token_start", "token_end", "embedding", "scale"}


class EmbeddingsDirError(EmbedpipeError):
    """An embeddings directory is missing, empty or not in the `ingest` layout."""


@dataclass
class Embeddings:
    vectors: np.ndarray  # float32 (n, dim)
    ids: list | np.ndarray
    columns: dict[str, list[str]]
    meta: IndexMeta


def _vectors(table: pa.Table, path: Path) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise EmbeddingsDirError(f"{path}: column 'embedding' has type {col.type}; "
                                 "expected fixed_size_list<float32|float16|int8>[dim]")
    dim = col.type.list_size
    flat = col.values.to_numpy(zero_copy_only=False)
    vecs = flat.reshape(-1, dim).astype(np.float32)
    if flat.dtype == np.int8:
        if "scale" not in table.column_names:
            raise EmbeddingsDirError(f"{path}: int8 embeddings without a 'scale' column")
        vecs *= table.column("scale").to_numpy()[:, None]
    return vecs


def read_embeddings(emb_dir: str | os.PathLike, keep_text: bool = True) -> Embeddings:
    """Load every part file of `emb_dir` (sorted by name) and check they agree."""
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise EmbeddingsDirError(f"{emb_dir}: not a directory of embeddings (ingest output)")
    parts = sorted(emb_dir.glob(PART_GLOB))
    if not parts:
        raise EmbeddingsDirError(f"{emb_dir}: no {PART_GLOB} files")
    vecs, ids, chunks = [], [], []
    columns: dict[str, list[str]] = {}
    first_meta: dict[str, str] | None = None
    for part in parts:
        try:
            table = pq.read_table(part)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EmbeddingsDirError(f"{part}: unreadable Parquet file ({exc})") from None
        for col in ("id", "embedding"):
            if col not in table.column_names:
                raise EmbeddingsDirError(f"{part}: missing column {col!r}")
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
                if k.startswith(b"embedpipe.")}
        if first_meta is None:
            first_meta = meta
        elif meta.get("embedpipe.model_sha256") != first_meta.get("embedpipe.model_sha256") or \
                meta.get("embedpipe.dim") != first_meta.get("embedpipe.dim"):
            raise EmbeddingsDirError(f"{part}: model or dim differs from {parts[0].name}")
        vecs.append(_vectors(table, part))
        ids.extend(table.column("id").to_pylist())
        chunks.append(table.column("chunk").to_numpy() if "chunk" in table.column_names
                      else np.zeros(table.num_rows, np.int32))
        if keep_text:
            for name in table.column_names:
                if name not in STRUCTURAL:
                    columns.setdefault(name, []).extend(
                        "" if v is None else str(v) for v in table.column(name).to_pylist())
    chunk = np.concatenate(chunks)
    if keep_text and chunk.size and chunk.max() > 0:
        columns["chunk"] = [str(c) for c in chunk.tolist()]
    m = first_meta or {}
    vectors = np.concatenate(vecs)
    meta = IndexMeta(source_dim=vectors.shape[1], model_sha256=m.get("embedpipe.model_sha256", ""),
                     model_path=m.get("embedpipe.model_path", ""), task=m.get("embedpipe.task", ""),
                     extra={"embeddings_dir": str(emb_dir.resolve()), "parts": len(parts)})
    id_arr = np.asarray(ids, dtype=np.int64) if ids and all(isinstance(i, int) for i in ids) else ids
    return Embeddings(vectors, id_arr, columns, meta)
