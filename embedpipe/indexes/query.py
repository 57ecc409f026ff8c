"""Text queries against an index: the right model, the right prompt, results as plain dicts.

The index header records the model's SHA-256 and path and the task the corpus was embedded
with. Queries use the *query* prompt when the corpus was embedded as documents (asymmetric
retrieval), and the corpus' own task when it was a symmetric query-style task (e.g.
sentence_similarity). A model whose SHA-256 differs from the index's is refused: its vectors
live in a different space and every score would be meaningless (`runtime.recorded_model`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import IndexMeta, VectorIndex
from embedpipe.indexes.registry import Builder
from embedpipe.pipeline.dataset import read_embeddings
from embedpipe.runtime.recorded_model import ModelMismatchError, open_embedder

__all__ = ["ModelMismatchError", "build_from_dir", "open_embedder", "query_task", "search_texts"]

# corpus task -> task used for the queries; anything not listed keeps its own task
QUERY_TASK_FOR: dict[str, str] = {"document": "query", "none": "query", "": "query"}


def query_task(index: VectorIndex) -> str:
    return QUERY_TASK_FOR.get(index.meta.task, index.meta.task)


def search_texts(index: VectorIndex, embedder: Any, queries: list[str], k: int = 10,
                 **knobs: Any) -> list[dict[str, Any]]:
    """[{"query", "results": [{"id", "score", <kept columns>…}]}] in query order; `knobs` are
    the index type's search parameters."""
    vecs = embedder.encode(queries, task=query_task(index), dim=None)
    scores, rows = index.search_rows(vecs, k, **knobs)
    ids = index.ids.take(rows)
    out = []
    for qi, text in enumerate(queries):
        results = []
        for s, r, i in zip(scores[qi], rows[qi], ids[qi]):
            if r < 0:
                continue
            hit: dict[str, Any] = {"id": i.item() if isinstance(i, np.generic) else i,
                                   "score": round(float(s), 6)}
            for name, table in index.columns.items():
                hit[name] = table[int(r)]
            results.append(hit)
        out.append({"query": text, "results": results})
    return out


def build_from_dir(emb_dir: str | os.PathLike, out: str | os.PathLike, kind: str = "brute",
                   quant: str = "fp32", dim: int | None = None, keep_text: bool = True,
                   progress: bool = False, **params: Any) -> VectorIndex:
    """`embedpipe build-index`: read ingest output, build, save atomically; returns the index."""
    emb = read_embeddings(emb_dir, keep_text=keep_text)
    if dim is not None and not 0 < dim <= emb.vectors.shape[1]:
        raise EmbedpipeError(f"--dim {dim} must be between 1 and the embeddings' width "
                             f"{emb.vectors.shape[1]}")
    builder = Builder(kind, quant, dim, IndexMeta.from_dataset(emb), **params)
    index = builder.add(emb.vectors, emb.ids, emb.columns).build(progress=progress)
    index.save(out)
    return index
