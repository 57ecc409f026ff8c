"""The embedding service behind /v1/embeddings and the query side of /v1/search.

Texts: look up the cache, tokenize the misses exactly as `ingest --long truncate` and
`pipeline.encode.encode_cached` do (so they share cache entries and vectors equal
`Embedder.encode`; `--long error` refuses what would be truncated), embed them through the model's
AsyncEmbedder, store them, then Matryoshka-truncate for the request. Token-id inputs go to the
model as given (BOS/EOS and any prompt included by the client). Cache look-ups and tokenizing
run on the model's tokenizer thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.cache import CachedRow, EmbeddingCache, cache_key
from embedpipe.pipeline.chunking import PROMPT_TOO_LONG, Chunker, RowPlan
from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.encode import TRUNCATE
from embedpipe.runtime.embedder import truncate_dim
from embedpipe.runtime.microbatch import QueueFullError, RequestTooLargeError
from embedpipe.runtime.prompts import DOCUMENT_TASK, canonical_task
from embedpipe.runtime.prompts import scheme as prompt_scheme
from embedpipe.serve.catalog import ServedModel
from embedpipe.serve.errors import APIError, bad_request
from embedpipe.serve.metrics import Metrics


@dataclass
class Embedded:
    vectors: np.ndarray  # (n, dim) float32, unit rows
    tokens: int  # tokens of the sequences that were (or, for cache hits, had been) embedded
    truncated: int  # inputs cut to the context
    cache_hits: int


@dataclass
class _Prepared:
    rows: list[CachedRow | None]  # cache hits; None = to embed
    keys: list[bytes | None]
    plans: dict[int, RowPlan]  # input index -> its tokenization, for the misses


class EmbeddingService:
    def __init__(self, long: str, cache: EmbeddingCache | None, metrics: Metrics):
        self.long, self.cache, self.metrics = long, cache, metrics
        self._chunkers: dict[tuple[str, str], Chunker] = {}

    def check_dim(self, served: ServedModel, dim: int | None) -> int:
        dims = served.embedder.dims
        if dim is None:
            return served.embedder.dim
        if dim not in dims:
            raise bad_request(
                f"'dimensions' {dim} is not offered by {served.name}; choose one of {', '.join(map(str, dims))}",
                "dimensions",
            )
        return dim

    async def embed_texts(
        self, served: ServedModel, texts: Sequence[str], task: str, titles: Sequence[str | None] | None, dim: int | None
    ) -> Embedded:
        dim = self.check_dim(served, dim)
        try:
            task = canonical_task(task)
        except EmbedpipeError as exc:
            raise bad_request(str(exc), "task") from None
        if titles is not None and task != DOCUMENT_TASK:
            raise bad_request(f"titles are used by the 'document' task only (task is {task!r})", "titles")
        scheme = prompt_scheme(served.embedder.prompts)
        if titles is not None and any(titles) and not scheme.takes_titles:
            raise bad_request(f"model {served.name!r} takes no titles ({scheme.name!r} prompts); drop them", "titles")
        prep = await served.aemb.prepare(self._prepare, served, list(texts), task, titles)
        misses = sorted(prep.plans)
        fresh = await self._submit(served, [prep.plans[i].seqs[0] for i in misses]) if misses else None
        store = []
        for row_no, i in enumerate(misses):
            plan = prep.plans[i]
            row = CachedRow(
                plan.spans, [len(plan.seqs[0])], fresh[row_no : row_no + 1], plan.text_tokens, plan.truncated
            )
            prep.rows[i] = row
            if prep.keys[i] is not None:
                store.append((prep.keys[i], served.embedder.model_sha256, served.embedder.dim, row))
        if store:
            await served.aemb.run_tokenizer(self.cache.put_many, store)
        full = np.stack([r.vectors[0] for r in prep.rows]).astype(np.float32, copy=False)
        truncated = sum(1 for r in prep.rows if r.truncated)
        self._count(served, len(texts), truncated)
        return Embedded(
            full if dim == full.shape[1] else truncate_dim(full, dim),
            sum(r.seq_tokens[0] for r in prep.rows),
            truncated,
            len(texts) - len(misses),
        )

    async def embed_ids(self, served: ServedModel, ids: Sequence[Sequence[int]], dim: int | None) -> Embedded:
        dim = self.check_dim(served, dim)
        vocab = served.embedder.model.cfg.vocab
        limit = served.embedder.max_tokens
        seqs, truncated = [], 0
        for i, seq in enumerate(ids):
            bad = next((t for t in seq if not 0 <= t < vocab), None)
            if bad is not None:
                raise bad_request(
                    f"input[{i}] holds token id {bad}, outside this model's vocabulary 0..{vocab - 1}",
                    "input",
                    "invalid_token_id",
                )
            if len(seq) > limit:
                if self.long == "error":
                    raise self._too_long(i, len(seq), limit)
                seq = list(seq[: limit - 1]) + [seq[-1]]  # keep the closing special token
                truncated += 1
            seqs.append(list(seq))
        vecs = await self._submit(served, seqs)
        self._count(served, len(seqs), truncated)
        return Embedded(
            vecs if dim == vecs.shape[1] else truncate_dim(vecs, dim), sum(len(s) for s in seqs), truncated, 0
        )

    # --- helpers ------------------------------------------------------------------------------
    def _prepare(
        self, served: ServedModel, texts: list[str], task: str, titles: Sequence[str | None] | None
    ) -> _Prepared:
        """On the tokenizer thread: cache look-up, then tokenize (and maybe truncate) the misses."""
        emb = served.embedder
        n = len(texts)
        chunker = self._chunker(served, task)
        setting = chunker.cache_setting
        keys: list[bytes | None] = [None] * n
        rows: list[CachedRow | None] = [None] * n
        if self.cache is not None:
            keys = [
                cache_key(emb.model_sha256, task, emb.dim, titles[i] if titles else None, texts[i], setting)
                for i in range(n)
            ]
            found = self.cache.get_many(keys, emb.dim)
            rows = [found.get(k) for k in keys]
            for i, row in enumerate(rows):
                if row is not None and row.truncated and self.long == "error":
                    raise self._too_long(i, None, emb.max_tokens)
        todo = [i for i in range(n) if rows[i] is None]
        plans = chunker.plan([texts[i] for i in todo], [titles[i] for i in todo] if titles else None)
        for i, plan in zip(todo, plans):
            if plan.error == PROMPT_TOO_LONG:
                raise bad_request(
                    f"input[{i}]: its title and prompt alone exceed the model's context of {emb.max_tokens} tokens",
                    "titles",
                    "input_too_long",
                )
            if plan.truncated and self.long == "error":
                raise self._too_long(i, plan.text_tokens, emb.max_tokens)
        return _Prepared(rows, keys, dict(zip(todo, plans)))

    def _chunker(self, served: ServedModel, task: str) -> Chunker:
        key = (served.name, task)
        if key not in self._chunkers:  # `ingest --long truncate`'s setting: the two share cache entries
            self._chunkers[key] = Chunker(
                served.embedder, task, served.embedder.max_tokens, TRUNCATE, None, IngestConfig.chunk_overlap
            )
        return self._chunkers[key]

    async def _submit(self, served: ServedModel, seqs: list[list[int]]) -> np.ndarray:
        try:
            vecs = await served.aemb.aencode_ids(seqs)
        except QueueFullError as exc:
            self.metrics.rejected.labels(served.name).inc()
            raise APIError(429, str(exc), "queue_full", headers={"Retry-After": str(exc.retry_after)}) from None
        except RequestTooLargeError as exc:
            raise APIError(413, str(exc), "request_too_large") from None
        if not np.isfinite(vecs).all():
            raise APIError(
                500,
                f"model {served.name} produced a non-finite vector; this is a bug, please report it with the input",
                "non_finite_vector",
            )
        return vecs

    def _count(self, served: ServedModel, inputs: int, truncated: int) -> None:
        self.metrics.inputs.labels(served.name).inc(inputs)
        if truncated:
            self.metrics.truncated.labels(served.name).inc(truncated)

    @staticmethod
    def _too_long(i: int, tokens: int | None, limit: int) -> APIError:
        size = f" ({tokens} tokens of text)" if tokens is not None else ""
        return bad_request(
            f"input[{i}] does not fit the model's context of {limit} tokens{size}; shorten it, or "
            "start the server with --long truncate",
            "input",
            "input_too_long",
        )
