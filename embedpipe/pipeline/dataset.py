"""The ingest output dataset: the one module that knows its layout, for writers and readers.

A dataset is a directory of Parquet parts named `part-NNNNNN.parquet` (written atomically by
`writer.PartWriter`), one row per (id, chunk) with the columns in `STRUCTURAL_COLUMNS` plus any
kept input columns, and schema metadata under the `embedpipe.` prefix naming the model (SHA-256
and path), task, dim, dtype and version. `_manifest.jsonl` beside the parts is the resume log
(`manifest.py`); its header names the input files, which `source_texts` reads back.

Indexes and evaluation read a dataset through `read_embeddings` only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import embedpipe
from embedpipe.errors import EmbedpipeError

PART_GLOB = "part-*.parquet"
TEMP_GLOB = ".part-*.tmp*"
META_PREFIX = "embedpipe."
# the columns every part has (int8 parts add "scale"); kept input columns may not reuse them
STRUCTURAL_COLUMNS: tuple[str, ...] = ("id", "chunk", "token_start", "token_end", "embedding", "scale")


class EmbeddingsDirError(EmbedpipeError):
    """An embeddings directory is missing, empty or not in the `ingest` layout."""


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def _quantize_int8(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: q = round(x / scale), scale = max|x| / 127 (x ≈ q * scale)."""
    scale = np.abs(vecs).max(axis=1) / 127.0 if len(vecs) else np.zeros(0, np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(vecs / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


Encoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
# dtype -> (arrow value type, encoder: float32 (n, dim) -> (values, scale or None))
DTYPE_TABLE: dict[str, tuple[pa.DataType, Encoder]] = {
    "float32": (pa.float32(), lambda v: (v.astype(np.float32, copy=False), None)),
    "float16": (pa.float16(), lambda v: (v.astype(np.float16), None)),
    "int8": (pa.int8(), _quantize_int8),
}


@dataclass
class DatasetMeta:
    """The schema metadata of a dataset: which model made the vectors, for which task."""

    model_sha256: str = ""
    model_path: str = ""
    task: str = ""
    dim: int = 0
    dtype: str = "float32"
    normalized: bool = True
    version: str = ""

    def to_schema(self) -> dict[str, str]:
        return {
            f"{META_PREFIX}model_sha256": self.model_sha256,
            f"{META_PREFIX}model_path": self.model_path,
            f"{META_PREFIX}task": self.task,
            f"{META_PREFIX}dim": str(self.dim),
            f"{META_PREFIX}normalized": "true" if self.normalized else "false",
            f"{META_PREFIX}dtype": self.dtype,
            f"{META_PREFIX}version": self.version or embedpipe.__version__,
        }

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> DatasetMeta:
        raw = {
            k.decode()[len(META_PREFIX) :]: v.decode()
            for k, v in (schema.metadata or {}).items()
            if k.startswith(META_PREFIX.encode())
        }
        dim = raw.get("dim", "0")
        return cls(
            raw.get("model_sha256", ""),
            raw.get("model_path", ""),
            raw.get("task", ""),
            int(dim) if dim.isdigit() else 0,
            raw.get("dtype", "float32"),
            raw.get("normalized", "true") == "true",
            raw.get("version", ""),
        )


def id_type(source_type: pa.DataType | None) -> pa.DataType:
    """int64 for integer ids (and the default row number), string for text-like ids."""
    if source_type is None or pa.types.is_integer(source_type):
        return pa.int64()
    if pa.types.is_dictionary(source_type):
        return id_type(source_type.value_type)
    if (
        pa.types.is_string(source_type)
        or pa.types.is_large_string(source_type)
        or pa.types.is_binary(source_type)
        or pa.types.is_large_binary(source_type)
        or pa.types.is_string_view(source_type)
    ):
        return pa.string()
    raise EmbedpipeError(f"id column has type {source_type}; use an integer or string column")


def output_schema(id_t: pa.DataType, keep: list[pa.Field], meta: DatasetMeta) -> pa.Schema:
    value_type = DTYPE_TABLE[meta.dtype][0]
    fields = [
        pa.field("id", id_t, nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("token_end", pa.int32(), nullable=False),
        *keep,
        pa.field("embedding", pa.list_(pa.field("item", value_type, nullable=False), meta.dim), nullable=False),
    ]
    if meta.dtype == "int8":
        fields.append(pa.field("scale", pa.float32(), nullable=False))
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.to_schema().items()})


def embedding_columns(vecs: np.ndarray, schema: pa.Schema, dtype: str) -> dict[str, pa.Array]:
    values, scale = DTYPE_TABLE[dtype][1](vecs)
    flat = pa.array(values.reshape(-1), type=DTYPE_TABLE[dtype][0])
    cols = {"embedding": pa.FixedSizeListArray.from_arrays(flat, type=schema.field("embedding").type)}
    if scale is not None:
        cols["scale"] = pa.array(scale, pa.float32())
    return cols


@dataclass
class Embeddings:
    """A whole dataset in memory: float32 vectors, ids, kept text columns and its metadata."""

    vectors: np.ndarray  # float32 (n, dim)
    ids: list | np.ndarray
    columns: dict[str, list[str]]
    meta: DatasetMeta
    path: Path = field(default_factory=Path)
    part_rows: dict[str, int] = field(default_factory=dict)  # part file name -> rows, in order


def _vectors(table: pa.Table, path: Path) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise EmbeddingsDirError(
            f"{path}: column 'embedding' has type {col.type}; expected fixed_size_list<float32|float16|int8>[dim]"
        )
    dim = col.type.list_size
    flat = col.values.to_numpy(zero_copy_only=False)
    vecs = flat.reshape(-1, dim).astype(np.float32)
    if flat.dtype == np.int8:
        if "scale" not in table.column_names:
            raise EmbeddingsDirError(f"{path}: int8 embeddings without a 'scale' column")
        vecs *= table.column("scale").to_numpy()[:, None]
    return vecs


def read_embeddings(emb_dir: str | os.PathLike, keep_text: bool = True, parts: list[str] | None = None) -> Embeddings:
    """Load every part file of `emb_dir` (sorted by name; only those named in `parts` when
    given) and check they agree.

    Ids come back as `ingest` wrote them (int64 or string): a chunked document appears once per
    chunk under the same id, so the chunk number is added as the text column ``chunk`` when any
    row has chunk > 0. float16 and int8 (+ per-row ``scale``) embeddings are read as float32.
    """
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise EmbeddingsDirError(f"{emb_dir}: not a directory of embeddings (ingest output)")
    only = None if parts is None else set(parts)
    files = sorted(p for p in emb_dir.glob(PART_GLOB) if only is None or p.name in only)
    if not files:
        raise EmbeddingsDirError(f"{emb_dir}: no {PART_GLOB} files")
    vecs, ids, chunks, spans, part_rows = [], [], [], [], {}
    columns: dict[str, list[str]] = {}
    first: DatasetMeta | None = None
    for part in files:
        try:
            table = pq.read_table(part)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EmbeddingsDirError(f"{part}: unreadable Parquet file ({exc})") from None
        for col in ("id", "embedding"):
            if col not in table.column_names:
                raise EmbeddingsDirError(f"{part}: missing column {col!r}")
        meta = DatasetMeta.from_schema(table.schema)
        if first is None:
            first = meta
        elif (meta.model_sha256, meta.dim) != (first.model_sha256, first.dim):
            raise EmbeddingsDirError(f"{part}: model or dim differs from {files[0].name}")
        vecs.append(_vectors(table, part))
        part_rows[part.name] = table.num_rows
        ids.extend(table.column("id").to_pylist())
        chunks.append(
            table.column("chunk").to_numpy() if "chunk" in table.column_names else np.zeros(table.num_rows, np.int32)
        )
        if keep_text and "token_start" in table.column_names and "token_end" in table.column_names:
            spans.extend(
                f"{a}:{b}"
                for a, b in zip(table.column("token_start").to_pylist(), table.column("token_end").to_pylist())
            )
        else:
            spans.extend([""] * table.num_rows)
        if keep_text:
            for name in table.column_names:
                if name not in STRUCTURAL_COLUMNS:
                    columns.setdefault(name, []).extend(
                        "" if v is None else str(v) for v in table.column(name).to_pylist()
                    )
    chunk = np.concatenate(chunks)
    if keep_text and chunk.size and chunk.max() > 0:
        columns["chunk"] = [str(c) for c in chunk.tolist()]
        columns["tokens"] = spans  # the chunk's text-token span "start:end", to show its text
    id_arr = np.asarray(ids, dtype=np.int64) if ids and all(isinstance(i, int) for i in ids) else ids
    return Embeddings(np.concatenate(vecs), id_arr, columns, first or DatasetMeta(), emb_dir.resolve(), part_rows)


def source_texts(emb_dir: str | os.PathLike, wanted: set) -> dict:
    """id -> input text for the `wanted` ids, streamed from the files the ingest job read (as
    named in its manifest header). Raises EmbeddingsDirError when no manifest names them."""
    from embedpipe.pipeline.manifest import read_header
    from embedpipe.pipeline.readers import Corpus

    header = read_header(emb_dir)
    if header is None:
        raise EmbeddingsDirError(f"{emb_dir}: no ingest manifest names the source files")
    text_col, id_col = header.get("text_col") or "text", header.get("id_col")
    paths = [d["path"] for d in header.get("inputs", [])]
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        raise EmbeddingsDirError(
            f"the source files of the embeddings are gone ({', '.join(missing) or 'none recorded'})"
        )
    cols = [text_col] + ([id_col] if id_col else [])
    found: dict = {}
    for start, _, batch in Corpus.open(paths, cols).batches(cols):
        texts = batch.column(batch.schema.get_field_index(text_col)).to_pylist()
        ids = (
            batch.column(batch.schema.get_field_index(id_col)).to_pylist()
            if id_col
            else range(start, start + batch.num_rows)
        )
        for i, t in zip(ids, texts):
            if i in wanted:
                found[i] = t
    return found
