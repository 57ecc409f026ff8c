"""Build brute and HNSW indexes from `ingest` output part by part, without a float copy of
the corpus: the only full-size array is the index's own codes (fp32 or int8).

Pass 1 reads each part's vectors (Matryoshka-truncated and re-normalized) to count rows and,
for int8/int16 with the per-dimension ('dim') scale, to find each dimension's range; pass 2
reads the parts again and quantizes each into its slice of the codes with that calibration,
which gives exactly the codes `quantize` would give on the whole matrix. Peak memory is the
codes plus one part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ArgumentError
from embedpipe.indexes.base import IdTable, IndexMeta, StringTable, dataset_source, truncate_normalize
from embedpipe.indexes.quant import STORAGE_TYPES, quantize
from embedpipe.pipeline.dataset import PART_GLOB, EmbeddingsDirError, read_embeddings


@dataclass
class Codes:
    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    ids: IdTable
    columns: dict[str, StringTable]
    meta: IndexMeta


class DimOutOfRangeError(EmbeddingsDirError, ArgumentError):
    """`dim` wider than the stored vectors (named `dim` in Python, `--dim` on the CLI)."""


def _parts(emb_dir: Path) -> list[str]:
    if not emb_dir.is_dir():
        raise EmbeddingsDirError(f"{emb_dir}: not a directory of embeddings (ingest output)")
    names = sorted(p.name for p in emb_dir.glob(PART_GLOB))
    if not names:
        raise EmbeddingsDirError(f"{emb_dir}: no {PART_GLOB} files")
    return names


def _blank(column: str) -> str:
    """What a row of a part without `column` holds (`read_embeddings` adds ``chunk`` only to
    parts that have chunks > 0; the others are chunk 0)."""
    return "0" if column == "chunk" else ""


def stream_codes(
    emb_dir: str | os.PathLike, quant: str, scale_mode: str = "dim", dim: int | None = None, keep_text: bool = True
) -> Codes:
    """Codes, scale, offset, ids, columns and metadata of every part of `emb_dir`."""
    emb_dir = Path(emb_dir)
    names = _parts(emb_dir)
    spec = STORAGE_TYPES[quant]
    rows, width, hi, lo = 0, 0, None, None
    first_meta = None
    for name in names:  # pass 1: sizes and per-dimension ranges
        part = read_embeddings(emb_dir, keep_text=False, parts=[name])
        width = part.vectors.shape[1]
        x = truncate_normalize(part.vectors, dim or width)
        first_meta = first_meta or part.meta
        if first_meta.model_sha256 != part.meta.model_sha256:
            raise EmbeddingsDirError(f"{emb_dir / name}: model differs from {names[0]}")
        rows += len(x)
        if len(x):
            hi = x.max(axis=0) if hi is None else np.maximum(hi, x.max(axis=0))
            lo = x.min(axis=0) if lo is None else np.minimum(lo, x.min(axis=0))
    if dim is not None and not 0 < dim <= width:
        raise DimOutOfRangeError("dim", f"{dim} must be between 1 and the embeddings' width {width}")
    d = dim or width
    calibration = None
    if spec.qmax and scale_mode == "dim":
        calibration = (
            ((hi - lo) / (2 * spec.qmax), (hi + lo) / 2)
            if hi is not None
            else (np.zeros(d, np.float32), np.zeros(d, np.float32))
        )
        calibration = tuple(np.asarray(c, np.float32) for c in calibration)
    codes = np.empty((rows, d), spec.dtype)
    row_scale = np.empty(rows, np.float32) if spec.qmax and scale_mode == "vector" else None
    part_ids: list[Any] = []
    columns: dict[str, list[str]] = {}
    part_rows: dict[str, int] = {}
    at = 0
    scale = offset = np.zeros(0, np.float32)
    for name in names:  # pass 2: quantize each part into its slice
        part = read_embeddings(emb_dir, keep_text=keep_text, parts=[name])
        x = truncate_normalize(part.vectors, d)
        c, scale, offset = quantize(x, quant, scale_mode, calibration=calibration)
        codes[at : at + len(x)] = c
        if row_scale is not None:
            row_scale[at : at + len(x)] = scale
        part_ids.append(part.ids)
        for col, values in part.columns.items():
            columns.setdefault(col, [_blank(col)] * at).extend(values)
        for col in columns:
            columns[col].extend([_blank(col)] * (at + len(x) - len(columns[col])))
        part_rows[name] = len(x)
        at += len(x)
    if all(isinstance(i, np.ndarray) for i in part_ids):
        id_table = IdTable(ints=np.concatenate(part_ids).astype(np.int64))
    else:
        id_table = IdTable.from_values([str(v) for i in part_ids for v in list(i)], rows)
    if row_scale is not None:
        scale = row_scale
    if quant == "fp32":
        scale = np.ones(0, np.float32)
    meta = IndexMeta(
        source_dim=width,
        model_sha256=first_meta.model_sha256,
        model_path=first_meta.model_path,
        task=first_meta.task,
        extra=dataset_source(emb_dir.resolve(), part_rows),
    )
    return Codes(codes, scale, offset, id_table, {k: StringTable.from_strings(v) for k, v in columns.items()}, meta)


STREAMED = ("brute", "hnsw")


def build_streamed(
    emb_dir: str | os.PathLike,
    kind: str,
    quant: str = "fp32",
    dim: int | None = None,
    keep_text: bool = True,
    progress: bool = False,
    scale_mode: str = "dim",
    **params: Any,
) -> Any:
    """A brute or HNSW index over `emb_dir`, built from streamed codes."""
    from embedpipe.indexes.registry import INDEX_TYPES

    cls = INDEX_TYPES[kind]
    if quant not in cls.quants:
        raise ValueError(f"{kind} indexes support quant {cls.quants}, not {quant!r}")
    p = cls.build_settings(dict(params, scale_mode=scale_mode))  # checked before any reading
    c = stream_codes(emb_dir, quant, p["scale_mode"], dim, keep_text)
    if kind == "hnsw":
        return cls.from_codes(c.codes, c.scale, c.offset, quant, c.ids, c.meta, c.columns, progress=progress, **p)
    return cls(c.codes, c.scale, quant, p["scale_mode"], c.ids, c.meta, c.columns, c.offset)
