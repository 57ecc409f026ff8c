"""The search service behind /v1/search: embed the queries with the index's model and prompt,
search the index on a search thread, and return ids, scores and the index's kept columns."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from embedpipe.indexes.query import query_task
from embedpipe.indexes.searcher import Index
from embedpipe.serve.catalog import ServedIndex
from embedpipe.serve.embeddings import Embedded, EmbeddingService
from embedpipe.serve.errors import bad_request
from embedpipe.serve.schemas import SearchRequest


def run_search(index: Any, queries: np.ndarray, k: int, knobs: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Hits of `queries` in `index` with the request's knobs through the same `embedpipe.Index`
    API as the CLI (one hit per chunked document, its best chunk)."""
    return Index.wrap(index).search_vectors(queries, k, **knobs)


class SearchService:
    def __init__(self, embeddings: EmbeddingService, threads: int = 1):
        self.embeddings = embeddings
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embedpipe-search")

    def knobs_for(self, served: ServedIndex, knobs: dict[str, Any]) -> dict[str, Any]:
        """The request's knobs checked against what this index type declares (400 naming the field)."""
        from embedpipe.indexes.params import check_params

        index = served.index
        for name, value in knobs.items():
            try:
                check_params(index.kind, index.search_params, {name: value}, "search")
            except ValueError as exc:
                raise bad_request(f"index {served.name!r}: {exc}", name) from None
        return knobs

    async def search(self, served: ServedIndex, req: SearchRequest) -> tuple[list[dict[str, Any]], Embedded]:
        """Results per query (in order) and the embedding of the queries (tokens, truncated, cache hits)."""
        knobs = self.knobs_for(served, req.knobs)
        if req.model and req.model != served.model.name:
            raise bad_request(
                f"index {served.name!r} is searched with the model it was built from, {served.model.name!r}, "
                f"not {req.model!r}; send that name or leave 'model' out",
                "model",
            )
        embedded = await self.embeddings.embed_texts(served.model, req.queries, query_task(served.index), None, None)
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._pool, run_search, served.index, embedded.vectors, req.k, knobs)
        return [{"query": q, "results": h} for q, h in zip(req.queries, hits)], embedded

    def close(self) -> None:
        self._pool.shutdown(wait=True)
