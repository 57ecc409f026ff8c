"""Text queries against an index: the right model, the right prompt, results as plain dicts.

The index header records the model's SHA-256 and path and the task the corpus was embedded
with. Queries use the *query* prompt when the corpus was embedded as documents (asymmetric
retrieval), and the corpus' own task when it was a symmetric query-style task (e.g.
sentence_similarity). A model whose SHA-256 differs from the index's is refused: its vectors
live in a different space and every score would be meaningless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import VectorIndex
from embedpipe.indexes.registry import Builder
from embedpipe.indexes.source import read_embeddings

# corpus task -> task used for the queries; anything not listed keeps its own task
QUERY_TASK_FOR: dict[str, str] = {"document": "query", "none": "query", "": "query"}


class ModelMismatchError(EmbedpipeError):
    """The query model is not the one the index's vectors came from."""


def query_task(index: VectorIndex) -> str:
    return QUERY_TASK_FOR.get(index.meta.task, index.meta.task)


def open_embedder(index: VectorIndex, model: str | os.PathLike | None = None,
                  allow_mismatch: bool = False, backend: str = "auto",
                  threads: int | None = None) -> Any:
    """Embedder for `index`: `model`, else the path recorded at build time, else the default."""
    from embedpipe.runtime.embedder import Embedder

    path = model or (index.meta.model_path if index.meta.model_path and
                     Path(index.meta.model_path).exists() else None)
    emb = Embedder.load(path, backend=backend, threads=threads)
    want = index.meta.model_sha256
    if want and emb.model_sha256 != want and not allow_mismatch:
        raise ModelMismatchError(
            f"model {emb.model_path} has SHA-256 {emb.model_sha256[:16]}…, but the index was "
            f"built from {index.meta.model_path or 'another model'} ({want[:16]}…); pass "
            "--model with that file (or --allow-model-mismatch to search anyway)")
    return emb


def search_texts(index: VectorIndex, embedder: Any, queries: list[str], k: int = 10
                 ) -> list[dict[str, Any]]:
    """[{"query", "results": [{"id", "score", <kept columns>…}]}] in query order."""
    vecs = embedder.encode(queries, task=query_task(index), dim=None)
    scores, rows = index.search_rows(vecs, k)
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
    builder = Builder(kind, quant, dim, emb.meta, **params)
    index = builder.add(emb.vectors, emb.ids, emb.columns).build(progress=progress)
    index.save(out)
    return index
