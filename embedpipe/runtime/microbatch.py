"""Micro-batching: many concurrent requests, few packed forward passes.

Requests (lists of token sequences) wait in a queue bounded in *tokens*; a scheduler task on
the event loop forms each pass from the queue and runs it on one worker thread, so the event
loop never blocks on the model. A pass holds at most `max_batch_tokens` tokens (our batches are
packed: tokens, not rows × longest). Requests are served shortest-remaining first, so a short
request waits behind a long one for at most the pass already running; a request larger than a
pass is split across passes and re-assembled in order. A request passed over for
`STARVE_PASSES` passes is served first (with at most half a pass), so a stream of short
requests cannot starve a long one. Cancelling the awaiting task (a client that went away)
removes the request's unscheduled sequences from the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embedpipe.errors import EmbedpipeError

STARVE_PASSES = 4
RETRY_AFTER_BOUNDS = (1, 60)  # seconds a rejected client is told to wait


class QueueFullError(EmbedpipeError):
    """The queue holds too many tokens to take this request now; retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLargeError(EmbedpipeError):
    """The request alone has more tokens than the queue may ever hold."""


@dataclass
class PassStats:
    """What one forward pass carried: for metrics and tests."""

    requests: int
    sequences: int
    tokens: int
    seconds: float
    queue_waits: list[float]  # seconds from submit to first scheduling, for requests starting now


@dataclass(eq=False)
class _Job:
    seqs: Sequence[Sequence[int]]
    out: np.ndarray
    future: asyncio.Future
    order: int
    submitted: float
    remaining: int  # tokens not yet scheduled
    next: int = 0  # first sequence not yet scheduled
    pending: int = 0  # sequences scheduled and not yet back
    started: bool = False
    skipped: int = 0
    cancelled: bool = False
    picks: list[int] = field(default_factory=list)


class MicroBatcher:
    """Queue + scheduler around `embed(seqs) -> (len(seqs), dim) float32`, run on one thread."""

    def __init__(
        self,
        embed: Callable[[list[Sequence[int]]], np.ndarray],
        dim: int,
        max_batch_tokens: int = 16384,
        max_batch_wait_ms: float = 2.0,
        max_queue_tokens: int | None = None,
        on_pass: Callable[[PassStats], None] | None = None,
    ):
        if max_batch_tokens <= 0:
            raise EmbedpipeError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        if max_queue_tokens is not None and max_queue_tokens <= 0:
            raise EmbedpipeError(f"max_queue_tokens must be positive, got {max_queue_tokens}")
        self.embed, self.dim = embed, dim
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max(0.0, max_batch_wait_ms) / 1e3
        self.max_queue_tokens = max_queue_tokens
        self.on_pass = on_pass
        self._queue: list[_Job] = []
        self._queued_tokens = 0
        self._counter = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="embedpipe-model")
        self._closing = False
        self._tokens_per_s = 0.0  # moving average, for Retry-After
        self.passes = 0
        # Requests announced (being tokenized) but not yet submitted: an idle model waits up to
        # max_batch_wait_ms for them, and not at all when none is on its way.
        self.expected = 0

    # --- state the metrics read ------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    # --- submitting ------------------------------------------------------------------------
    async def submit(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(seqs), dim) vectors in input order; raises QueueFullError when over the bound."""
        if self._closing:
            raise EmbedpipeError("the batcher is shut down")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="embedpipe-microbatch")
        tokens = sum(len(s) for s in seqs)
        if not seqs:
            return np.empty((0, self.dim), np.float32)
        self._admit(tokens)
        job = _Job(
            seqs,
            np.empty((len(seqs), self.dim), np.float32),
            loop.create_future(),
            next(self._counter),
            time.perf_counter(),
            tokens,
        )
        self._queue.append(job)
        self._queued_tokens += tokens
        self._wake.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._drop(job)
            raise

    def _admit(self, tokens: int) -> None:
        limit = self.max_queue_tokens
        if limit is None:
            return
        if tokens > limit:
            raise RequestTooLargeError(
                f"the request has {tokens} tokens, more than the queue holds ({limit}); split it into smaller requests"
            )
        if self._queued_tokens + tokens > limit:
            rate = self._tokens_per_s or float(self.max_batch_tokens)
            wait = math.ceil((self._queued_tokens + tokens - limit) / rate)
            raise QueueFullError(
                f"the queue is full ({self._queued_tokens} of {limit} tokens queued); retry later",
                min(max(wait, RETRY_AFTER_BOUNDS[0]), RETRY_AFTER_BOUNDS[1]),
            )

    def _drop(self, job: _Job) -> None:
        job.cancelled = True
        if job in self._queue:
            self._queue.remove(job)
            self._queued_tokens -= job.remaining
            job.remaining = 0

    # --- scheduling --------------------------------------------------------------------------
    def _form_pass(self) -> list[tuple[_Job, int]]:
        """(job, sequence index) pairs for the next pass, within the token budget."""
        budget = self.max_batch_tokens
        picks: list[tuple[_Job, int]] = []
        starving = [j for j in self._queue if j.skipped >= STARVE_PASSES]
        others = sorted((j for j in self._queue if j.skipped < STARVE_PASSES), key=lambda j: (j.remaining, j.order))
        # Starving requests first, with at most half a pass; then shortest remaining first;
        # then whatever budget is left goes to the starving ones again.
        for jobs, share in ((starving, budget // 2), (others, budget), (starving, budget)):
            allowance = min(share, budget)
            for job in jobs:
                while job.next < len(job.seqs):
                    n = len(job.seqs[job.next])
                    if n > allowance and picks:
                        break
                    picks.append((job, job.next))
                    job.next += 1
                    job.pending += 1
                    job.remaining -= n
                    self._queued_tokens -= n
                    allowance -= n
                    budget -= n
                if allowance <= 0 or budget <= 0:
                    break
        chosen = {id(job) for job, _ in picks}
        for job in self._queue:
            job.skipped = 0 if id(job) in chosen else job.skipped + 1
        self._queue = [j for j in self._queue if j.next < len(j.seqs)]
        return picks

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                if self._closing:
                    return
                continue
            await self._gather(loop)
            while self._queue:
                try:
                    picks = self._form_pass()
                except Exception as exc:  # noqa: BLE001 - a scheduler bug must fail requests, not hang them
                    self._fail_all(exc)
                    break
                await self._run_pass(loop, picks)
            if self._closing:
                return

    def _fail_all(self, exc: Exception) -> None:
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(exc)
        self._queue.clear()
        self._queued_tokens = 0

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before a pass on an idle model: wait (bounded) for announced requests to arrive."""
        deadline = loop.time() + self.max_wait
        while self.expected > 0 and self._queued_tokens < self.max_batch_tokens:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            self._wake.clear()

    async def _run_pass(self, loop: asyncio.AbstractEventLoop, picks: list[tuple[_Job, int]]) -> None:
        now = time.perf_counter()
        waits = []
        for job, _ in picks:
            if not job.started:
                job.started = True
                waits.append(now - job.submitted)
        seqs = [list(job.seqs[i]) for job, i in picks]
        tokens = sum(len(s) for s in seqs)
        t0 = time.perf_counter()
        try:
            vecs = await loop.run_in_executor(self._worker, self.embed, seqs)
            error = None
        except Exception as exc:  # noqa: BLE001 - handed to every request of the pass
            vecs, error = None, exc
        seconds = time.perf_counter() - t0
        self.passes += 1
        if seconds > 0:
            rate = tokens / seconds
            self._tokens_per_s = rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
        for row, (job, i) in enumerate(picks):
            job.pending -= 1
            if job.future.done() or job.cancelled:
                continue
            if error is not None:
                job.future.set_exception(error)
                continue
            job.out[i] = vecs[row]
            if job.pending == 0 and job.next == len(job.seqs):
                job.future.set_result(job.out)
        if self.on_pass is not None:
            self.on_pass(PassStats(len({id(j) for j, _ in picks}), len(seqs), tokens, seconds, waits))

    async def aclose(self) -> None:
        """Finish everything queued, then stop the scheduler and the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        self._worker.shutdown(wait=True)
