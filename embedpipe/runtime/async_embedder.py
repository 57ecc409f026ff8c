"""`AsyncEmbedder`: `Embedder.encode` for asyncio code, with micro-batching across callers.

    async with AsyncEmbedder(Embedder.load()) as emb:
        vecs = await emb.aencode(["a query"], task="query", dim=256)

Every concurrent `aencode` of one AsyncEmbedder joins the same packed forward passes (see
`embedpipe.runtime.microbatch`); tokenization runs on its own thread and the model on one worker
thread, so the event loop stays free. `embedpipe serve` is built on this class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.dims import check_dim
from embedpipe.runtime.embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder, truncate_dim
from embedpipe.runtime.microbatch import MicroBatcher, PassStats
from embedpipe.runtime.text_ids import text_list

T = TypeVar("T")


class AsyncEmbedder:
    """Wraps a loaded `Embedder`; one instance per model, shared by every caller."""

    def __init__(
        self,
        embedder: Embedder,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_wait_ms: float = 2.0,
        max_queue_tokens: int | None = None,
        on_pass: Callable[[PassStats], None] | None = None,
    ):
        self.embedder = embedder
        self.dim, self.dims, self.max_tokens = embedder.dim, embedder.dims, embedder.max_tokens
        self.batcher = MicroBatcher(
            self._embed_pass, embedder.dim, max_batch_tokens, max_batch_wait_ms, max_queue_tokens, on_pass
        )
        self._tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix="embedpipe-tokenize")

    def _embed_pass(self, seqs: list[Sequence[int]]) -> np.ndarray:
        """One packed forward pass (runs on the batcher's worker thread)."""
        tokens = sum(len(s) for s in seqs)
        return self.embedder.encode_ids(seqs, batch_size=len(seqs), max_batch_tokens=max(tokens, 1))

    async def run_tokenizer(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the tokenizer thread (tokenizing, cache look-ups: off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, fn, *args)

    async def prepare(self, fn: Callable[..., T], *args: object) -> T:
        """`run_tokenizer` for work that precedes a submit: an idle model waits for it to join its pass.

        Call `aencode_ids` right after (no await in between) for the announcement to hold."""
        self.batcher.expected += 1
        try:
            return await self.run_tokenizer(fn, *args)
        finally:
            self.batcher.expected -= 1

    async def aencode(
        self,
        texts: Sequence[str],
        task: str = "query",
        titles: Sequence[str | None] | None = None,
        dim: int | None = None,
        truncate: bool = False,
        any_dim: bool = False,
    ) -> np.ndarray:
        """Like `Embedder.encode`: L2-normalized (n, dim) float32 rows in input order."""
        ids = await self.prepare(self.embedder.tokenize, text_list(texts, "aencode"), task, titles, truncate)
        return await self.aencode_ids(ids, dim, any_dim)

    async def aencode_ids(
        self, ids: Sequence[Sequence[int]], dim: int | None = None, any_dim: bool = False
    ) -> np.ndarray:
        """Like `Embedder.encode_ids`: sequences that already carry BOS/EOS and the prompt."""
        dim = check_dim(dim, self.dims, any_dim)
        for i, seq in enumerate(ids):
            if len(seq) == 0:
                raise EmbedpipeError(f"sequence {i} has no tokens")
            if len(seq) > self.max_tokens:
                raise EmbedpipeError(f"sequence {i} has {len(seq)} tokens, more than the context of {self.max_tokens}")
        vecs = await self.batcher.submit(ids)
        return vecs if dim == self.dim else truncate_dim(vecs, dim)

    async def aclose(self) -> None:
        """Finish queued work, then stop the worker threads."""
        await self.batcher.aclose()
        self._tokenizer_pool.shutdown(wait=True)

    async def __aenter__(self) -> AsyncEmbedder:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
