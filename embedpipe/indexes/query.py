"""Text queries against an index: the right model, the right prompt, results as plain dicts.

The index header records the model's SHA-256 and path and the task the corpus was embedded
with. Queries use the *query* prompt when the corpus was embedded as documents (asymmetric
retrieval), and the corpus' own task when it was a symmetric query-style task (e.g.
sentence_similarity). A model whose SHA-256 differs from the index's is refused: its vectors
live in a different space and every score would be meaningless (`runtime.recorded_model`).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ArgumentError, EmbedpipeError, shape_text
from embedpipe.indexes.base import IndexMeta, VectorIndex
from embedpipe.indexes.registry import Builder
from embedpipe.runtime.dims import check_dim, recorded_model_dims
from embedpipe.runtime.recorded_model import ModelMismatchError, open_embedder

__all__ = [
    "ModelMismatchError",
    "build_from_dir",
    "open_embedder",
    "query_task",
    "search_texts",
    "search_vectors",
    "text_embedder",
    "vector_queries",
]

# corpus task -> task used for the queries; anything not listed keeps its own task
QUERY_TASK_FOR: dict[str, str] = {"document": "query", "none": "query", "": "query"}


def query_task(index: VectorIndex) -> str:
    return QUERY_TASK_FOR.get(index.meta.task, index.meta.task)


def search_texts(
    index: VectorIndex, embedder: Any, queries: list[str], k: int = 10, **knobs: Any
) -> list[dict[str, Any]]:
    """[{"query", "results": [{"id", "score", <kept columns>…}]}] in query order; `knobs` are
    the index type's search parameters."""
    vecs = embedder.encode(queries, task=query_task(index), dim=None)
    return search_vectors(index, vecs, k, labels=queries, **knobs)


def search_vectors(
    index: VectorIndex, vectors: np.ndarray, k: int = 10, labels: list[Any] | None = None, **knobs: Any
) -> list[dict[str, Any]]:
    """Vector queries: [{"query": label (default: row number), "results": [...]}]."""
    scores, rows = index.search_rows(vectors, k, **knobs)
    ids = index.ids.take(rows)
    out = []
    for qi in range(len(rows)):
        results = []
        for s, r, i in zip(scores[qi], rows[qi], ids[qi]):
            if r < 0:
                continue
            hit: dict[str, Any] = {"id": i.item() if isinstance(i, np.generic) else i, "score": round(float(s), 6)}
            for name, table in index.columns.items():
                hit[name] = table[int(r)]
            results.append(hit)
        out.append({"query": labels[qi] if labels is not None else qi, "results": results})
    return out


def text_embedder(
    index: VectorIndex,
    model: str | os.PathLike | None = None,
    allow_mismatch: bool = False,
    backend: str = "auto",
    threads: int | None = None,
) -> Any:
    """`open_embedder` for text queries; an index of foreign embeddings names no model."""
    if model is None and index.meta.extra.get("model") == "none":
        raise EmbedpipeError(
            "this index was built from foreign embeddings and records no "
            "model: pass --model for text queries, or --vector/--vectors"
        )
    return open_embedder(index, model, allow_mismatch, backend, threads)


def vector_queries(vector: str | None = None, vectors: str | os.PathLike | None = None) -> np.ndarray:
    """Query vectors from `--vector "0.1,0.2,…"` or `--vectors F.npy` (checked: 2-D, finite)."""
    if (vector is None) == (vectors is None):
        raise ArgumentError("vector", "or {vectors}: give exactly one", ("vectors",))
    if vector is not None:
        try:
            q = np.asarray([float(v) for v in vector.split(",")], np.float32)[None, :]
        except ValueError:
            raise ArgumentError("vector", "must be comma-separated numbers") from None
        where = "--vector"
    else:
        try:
            q = np.load(vectors, allow_pickle=False)
        except OSError as exc:
            raise EmbedpipeError(f"{vectors}: cannot read query vectors ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise EmbedpipeError(f"{vectors}: cannot read query vectors ({exc})") from None
        where = str(vectors)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.dtype.kind not in "fiu":
            raise EmbedpipeError(f"{vectors}: expected a 2-D float array, got {q.dtype} {shape_text(q.shape)}")
    q = q.astype(np.float32)
    if len(q) == 0 or q.shape[1] == 0:
        raise EmbedpipeError(f"{where}: no query vectors in it")
    if not np.isfinite(q).all():
        raise EmbedpipeError(f"{where}: query vectors contain NaN or infinite values")
    return q


def refuse_output_over_input(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """An output path that is the input file, or one of the files an ingest output directory
    is made of (a part, the manifest), would destroy what it is built from."""
    from embedpipe.pipeline.manifest import OWNED_GLOBS

    src, dst = Path(source).resolve(), Path(out).resolve()
    if dst == src or (dst.parent == src and any(fnmatch.fnmatch(dst.name, g) for g in OWNED_GLOBS)):
        raise ArgumentError("out", f"({out}) would overwrite the input {source}; write the index elsewhere")


def build_from_dir(
    emb_dir: str | os.PathLike,
    out: str | os.PathLike,
    kind: str = "brute",
    quant: str = "fp32",
    dim: int | None = None,
    keep_text: bool = True,
    progress: bool = False,
    id_column: str | None = None,
    embedding_column: str = "embedding",
    normalize: bool = False,
    any_dim: bool = False,
    **params: Any,
) -> VectorIndex:
    """`embedpipe build-index`: read ingest output (a directory; brute and HNSW stream it part
    by part, no float copy of the corpus) or another tool's embeddings (a .npy / .parquet /
    Arrow file, see `indexes.foreign`), build, save atomically; returns the index. `dim` must
    be a Matryoshka width of the recorded model (`runtime.dims`) unless `any_dim`."""
    refuse_output_over_input(emb_dir, out)
    if Path(emb_dir).is_file():
        from embedpipe.indexes.foreign import read_foreign

        vectors, ids, meta = read_foreign(emb_dir, id_column, embedding_column, normalize)
        columns: dict[str, list[str]] = {}
        dim = check_dim(dim, recorded_model_dims(meta.model_path, vectors.shape[1]), any_dim)
    elif kind in ("brute", "hnsw"):
        dim = _checked_dataset_dim(emb_dir, dim, any_dim)
        from embedpipe.indexes.stream import build_streamed

        index = build_streamed(emb_dir, kind, quant, dim, keep_text, progress, **params)
        _refuse_empty(index, emb_dir)
        index.save(out)
        return index
    else:
        from embedpipe.pipeline.dataset import read_embeddings  # pyarrow: only when building

        emb = read_embeddings(emb_dir, keep_text=keep_text)
        vectors, ids, meta, columns = emb.vectors, emb.ids, IndexMeta.from_dataset(emb), emb.columns
        dim = check_dim(dim, recorded_model_dims(emb.meta.model_path, vectors.shape[1]), any_dim)
    if len(vectors) == 0:
        _refuse_empty(None, emb_dir)
    builder = Builder(kind, quant, dim, meta, **params)
    index = builder.add(vectors, ids, columns, copy=False).build(progress=progress)  # read here: ours
    index.save(out)
    return index


class NoVectorsError(EmbedpipeError):
    """The input of `build-index` holds no vectors: an index of nothing is refused, not written."""


def _refuse_empty(index: VectorIndex | None, emb_dir: str | os.PathLike) -> None:
    if index is None or index.count == 0:
        raise NoVectorsError(
            f"{emb_dir}: no vectors to index (0 rows); check that the ingest input had non-empty text, "
            "then ingest again"
        )


def _checked_dataset_dim(emb_dir: str | os.PathLike, dim: int | None, any_dim: bool) -> int | None:
    """`dim` checked against the model recorded in the first part of an ingest output (its
    schema only: a streamed build must not read the corpus to reject a bad width); None stays
    None (full width). A directory without parts is left to the builder's own message."""
    if dim is None:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedpipe.pipeline.dataset import PART_GLOB, DatasetMeta

    first = next(iter(sorted(Path(emb_dir).glob(PART_GLOB))), None)
    try:
        meta = DatasetMeta.from_schema(pq.read_schema(first)) if first is not None else None
    except (OSError, pa.ArrowException):
        meta = None  # unreadable: the builder names the file
    if meta is None or meta.dim <= 0:
        return dim
    return check_dim(dim, recorded_model_dims(meta.model_path, meta.dim), any_dim)
