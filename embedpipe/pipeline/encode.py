"""`encode_cached`: `Embedder.encode` for in-memory texts, through the ingest embedding cache.

One vector per text, long texts truncated, tokenized exactly as `ingest --long truncate` does,
and cached under the same keys, so a text embedded by either path is never run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.cache import CachedRow, EmbeddingCache, cache_key
from embedpipe.pipeline.chunking import Chunker
from embedpipe.pipeline.config import IngestConfig
from embedpipe.runtime.dims import check_dim

TRUNCATE = "truncate"


def encode_cached(
    emb: Any,
    texts: Sequence[str],
    task: str,
    titles: Sequence[str | None] | None = None,
    dim: int | None = None,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    any_dim: bool = False,
) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors in input order; misses are embedded and stored.

    Non-string texts, and empty ones without a title, are errors naming their position; equal
    texts are embedded once.
    """
    from embedpipe.runtime.prompts import canonical_task

    title_of = (lambda i: titles[i]) if titles is not None else (lambda i: None)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not (t.strip() or (title_of(i) or "").strip()):
            raise EmbedpipeError(f"text {i} is empty or not a string; it cannot be embedded")
    dim = check_dim(dim, emb.dims, any_dim)
    task = canonical_task(task)
    chunker = Chunker(emb, task, emb.max_tokens, TRUNCATE, None, IngestConfig.chunk_overlap)
    keys = [cache_key(emb.model_sha256, task, dim, title_of(i), t, chunker.cache_setting) for i, t in enumerate(texts)]
    found = cache.get_many(keys, dim) if cache is not None and keys else {}
    first_of: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k not in found:
            first_of.setdefault(k, i)
    todo = list(first_of.values())
    if todo:
        plans = chunker.plan([texts[i] for i in todo], [title_of(i) for i in todo] if titles is not None else None)
        for i, plan in zip(todo, plans):
            if plan.error:
                raise EmbedpipeError(
                    f"text {i}: its prompt alone is longer than the model's context of {emb.max_tokens} tokens"
                )
        vecs = emb.encode_ids([p.seqs[0] for p in plans], dim=dim, show_progress=progress, any_dim=True)
        fresh = {
            keys[i]: CachedRow(p.spans, [len(p.seqs[0])], vecs[j : j + 1], p.text_tokens, p.truncated)
            for j, (i, p) in enumerate(zip(todo, plans))
        }
        if cache is not None:
            cache.put_many([(k, emb.model_sha256, dim, row) for k, row in fresh.items()])
        found = {**found, **fresh}
    out = np.empty((len(texts), dim), np.float32)
    for i, k in enumerate(keys):
        out[i] = found[k].vectors[0]
    return out
