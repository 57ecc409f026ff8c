"""`embedpipe.Index`: the Python search API that `embedpipe search` and `/v1/search` use.

    import embedpipe
    index = embedpipe.Index("docs.idx")            # the model recorded in the index is opened on first text query
    for hit in index.search("how do I bake bread", k=5):
        print(hit["score"], hit["id"], hit.get("text"))

Results are dicts: ``id``, ``score`` and the index's kept text columns. A document that ingest
chunked appears once, as its best-scoring chunk (``chunk`` = its number, ``text`` = that
chunk's text when the document's text was kept); ``per_chunk=True`` returns every chunk.
Search knobs (``ef_search`` for hnsw, ``search_k`` for annoy) are checked against the index
type: one that does not apply is an error, not silently ignored.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.codegen.threads import using_threads
from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.indexes.base import VectorIndex
from embedpipe.indexes.query import query_task, text_embedder, vector_queries

CHUNK_COLUMN, SPAN_COLUMN, TEXT_COLUMN = "chunk", "tokens", "text"
# candidates fetched per wanted document when chunks are collapsed, grown until k documents are found
OVERFETCH = 4


class KnobError(EmbedpipeError):
    """A search parameter the index type does not take; names the flag on the CLI."""

    def __init__(self, name: str, kind: str, allowed: Sequence[Any]) -> None:
        self.name, self.kind, self.allowed = name, kind, list(allowed)
        super().__init__(self.render(name, [p.name for p in self.allowed]))

    def render(self, shown: str, allowed: list[str]) -> str:
        takes = ", ".join(allowed) or "no search parameters"
        return f"{shown} does not apply to {self.kind} indexes (they take: {takes})"

    def cli_message(self) -> str:
        flag = f"--{self.name.replace('_', '-')}"
        return self.render(flag, [p.option for p in self.allowed])


class Index:
    """An index file opened for search; text queries use the model recorded in it (checked by
    SHA-256), or `model` when given."""

    def __init__(
        self,
        path: str | os.PathLike,
        model: str | os.PathLike | None = None,
        allow_model_mismatch: bool = False,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        from embedpipe.indexes import load_index

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ArgumentError("threads", f"must be a positive integer, got {threads!r}")
        self.path = Path(path)
        with using_threads(threads):
            self.index: VectorIndex = load_index(self.path)
        self._model, self._allow_mismatch = model, allow_model_mismatch
        self._backend, self._threads = backend, threads
        self._embedder: Any = None

    @classmethod
    def wrap(cls, index: VectorIndex, embedder: Any = None) -> Index:
        """An `Index` over an already loaded `VectorIndex` (and embedder), e.g. the server's catalog."""
        self = cls.__new__(cls)
        self.path, self.index = Path(""), index
        self._model, self._allow_mismatch, self._backend, self._threads = None, False, "auto", None
        self._embedder = embedder
        return self

    @property
    def kind(self) -> str:
        return self.index.kind

    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def count(self) -> int:
        return self.index.count

    @property
    def columns(self) -> list[str]:
        return sorted(self.index.columns)

    @property
    def chunked(self) -> bool:
        """True when some document was split into chunks by ingest."""
        return CHUNK_COLUMN in self.index.columns

    @functools.cached_property
    def text_column(self) -> str:
        """The kept column holding the documents' text: `text`, or the ingest job's text column
        (from the manifest of the embeddings the index was built from, when it is still there)."""
        if TEXT_COLUMN in self.index.columns or not set(self.index.columns) - {CHUNK_COLUMN, SPAN_COLUMN}:
            return TEXT_COLUMN  # kept, or no text kept at all: no manifest to read
        emb_dir = self.index.meta.extra.get("embeddings_dir")
        if emb_dir:
            from embedpipe.pipeline.manifest import read_header

            name = (read_header(emb_dir) or {}).get("text_col")
            if name in self.index.columns:
                return name
        return TEXT_COLUMN

    @property
    def embedder(self) -> Any:
        """The model for text queries, opened on first use."""
        if self._embedder is None:
            self._embedder = _open_embedder(self)
        return self._embedder

    def check_knobs(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """`knobs` without the None values, each one a search parameter of this index type."""
        given = {name: value for name, value in knobs.items() if value is not None}
        declared = {p.name for p in self.index.search_params}
        for name in given:
            if name not in declared:
                raise KnobError(name, self.kind, self.index.search_params)
        return given

    def search(self, query: str, k: int = 10, per_chunk: bool = False, **knobs: Any) -> list[dict[str, Any]]:
        """The `k` best hits for one text query."""
        return self.search_batch([query], k, per_chunk, **knobs)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, per_chunk: bool = False, **knobs: Any
    ) -> list[list[dict[str, Any]]]:
        """Hits for each text query, embedded with the index's query prompt."""
        if isinstance(queries, str):
            raise EmbedpipeError("search_batch takes a list of queries; use search() for one")
        if not queries:
            return []
        self.check_knobs(knobs)  # before the model is loaded
        vectors = self.embedder.encode(list(queries), task=query_task(self.index), dim=None)
        return self.search_vectors(vectors, k, per_chunk, **knobs)

    def search_vectors(
        self, vectors: np.ndarray | str, k: int = 10, per_chunk: bool = False, **knobs: Any
    ) -> list[list[dict[str, Any]]]:
        """Hits for each row of `vectors` ((q, dim) float32, or "0.1,0.2,…" for one query)."""
        if isinstance(vectors, str):
            vectors = vector_queries(vector=vectors)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if k < 1:
            raise EmbedpipeError(f"k must be at least 1, got {k}")
        if not len(vectors):
            return []
        knobs = self.check_knobs(knobs)
        collapse = self.chunked and not per_chunk
        fetch = min(self.count, k * OVERFETCH if collapse else k) or k
        while True:
            try:
                with using_threads(self._threads):
                    scores, rows = self.index.search_rows(vectors, fetch, **knobs)
            except ValueError as exc:  # a knob's value out of range (params.Param.check)
                raise EmbedpipeError(str(exc)) from None
            hits = [self._hits(s, r, collapse, k) for s, r in zip(scores, rows)]
            if not collapse or fetch >= self.count or all(len(h) >= k for h in hits):
                return hits
            fetch = min(self.count, fetch * OVERFETCH)

    def _hits(self, scores: np.ndarray, rows: np.ndarray, collapse: bool, k: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[Any] = set()
        ids = self.index.ids.take(rows[None, :])[0]
        for score, row, doc in zip(scores, rows, ids):
            if row < 0:
                continue
            doc = doc.item() if isinstance(doc, np.generic) else doc
            if collapse:
                if doc in seen:
                    continue  # a worse chunk of a document already listed
                seen.add(doc)
            hit: dict[str, Any] = {"id": doc, "score": round(float(score), 6)}
            for name, table in self.index.columns.items():
                hit[name] = int(table[int(row)] or 0) if name == CHUNK_COLUMN else table[int(row)]
            self._chunk_text(hit)
            out.append(hit)
            if len(out) == k:
                break
        return out

    def _chunk_text(self, hit: dict[str, Any]) -> None:
        """For a chunk of a longer document, `text` (when kept) becomes the chunk's own text,
        decoded from its token span; needs the query model, so vector-only searches keep the
        whole document's text."""
        span = hit.pop(SPAN_COLUMN, "")
        if not span or self._embedder is None:
            return
        column = self.text_column
        if column not in hit:
            return
        start, end = (int(v) for v in span.split(":"))
        tokenizer = self._embedder.tokenizer
        ids = tokenizer.encode(hit[column], add_special=False)
        if start > 0 or end < len(ids):
            hit[column] = tokenizer.decode(ids[start:end]).strip()
            hit["chunk_tokens"] = [start, end]


def _open_embedder(index: Index) -> Any:
    return text_embedder(index.index, index._model, index._allow_mismatch, index._backend, index._threads)


def search(
    index: str | os.PathLike,
    queries: str | Sequence[str],
    k: int = 10,
    model: str | os.PathLike | None = None,
    per_chunk: bool = False,
    **knobs: Any,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """One-shot search of an index file: hits for one query (a str), or a list of hit lists."""
    idx = Index(index, model=model)
    if isinstance(queries, str):
        return idx.search(queries, k, per_chunk, **knobs)
    return idx.search_batch(list(queries), k, per_chunk, **knobs)
