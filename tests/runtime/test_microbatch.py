"""Micro-batching scheduler: packing, order, splitting, fairness, bounds and cancellation.

A fake model (vector = (first id, length)) records every pass, so the tests see exactly what
was batched without running a transformer.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from embedpipe.runtime.microbatch import MicroBatcher, QueueFullError, RequestTooLargeError


class FakeModel:
    def __init__(self, gate: threading.Event | None = None):
        self.passes: list[list[list[int]]] = []
        self.gate = gate

    def __call__(self, seqs):
        if self.gate is not None:
            assert self.gate.wait(10)
        self.passes.append([list(s) for s in seqs])
        return np.array([[s[0], len(s)] for s in seqs], np.float32)


def seqs(start: int, n: int, length: int) -> list[list[int]]:
    return [[start + i] * length for i in range(n)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_requests_share_passes_and_keep_order():
    model = FakeModel()

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=1000, max_batch_wait_ms=5)
        reqs = [seqs(100 * r, 1 + r % 3, 3 + r) for r in range(20)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.aclose()
        return reqs, outs

    reqs, outs = run(main())
    for req, out in zip(reqs, outs):
        assert out[:, 0].tolist() == [s[0] for s in req] and out[:, 1].tolist() == [len(s) for s in req]
    assert len(model.passes) < 20  # requests were merged
    assert all(sum(len(s) for s in p) <= 1000 for p in model.passes)


def test_large_request_is_split_across_passes_in_order():
    model = FakeModel()

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=50, max_batch_wait_ms=0)
        out = await b.submit(seqs(0, 40, 10))
        await b.aclose()
        return out

    out = run(main())
    assert out[:, 0].tolist() == list(range(40))
    assert len(model.passes) == 8 and all(sum(len(s) for s in p) <= 50 for p in model.passes)


def test_short_request_overtakes_a_long_one():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=100, max_batch_wait_ms=0)
        first = asyncio.ensure_future(b.submit(seqs(0, 1, 5)))  # occupies the worker
        await asyncio.sleep(0.05)
        long = asyncio.ensure_future(b.submit(seqs(1000, 50, 10)))  # 5 passes of work
        await asyncio.sleep(0.01)
        short = asyncio.ensure_future(b.submit(seqs(5000, 1, 4)))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, long, short)
        await b.aclose()

    run(main())
    # pass 0 = the first request; the short one rides in pass 1, not after the long one
    assert [5000] * 4 in model.passes[1]


def test_starving_request_is_served():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=20, max_batch_wait_ms=0)
        long = asyncio.ensure_future(b.submit(seqs(1000, 4, 20)))
        await asyncio.sleep(0.01)
        shorts = [asyncio.ensure_future(b.submit(seqs(i, 1, 20))) for i in range(20)]
        gate.set()
        await asyncio.gather(long, *shorts)
        await b.aclose()

    run(main())
    from embedpipe.runtime.microbatch import STARVE_PASSES

    served = [i for i, p in enumerate(model.passes) if any(s[0] >= 1000 for s in p)]
    assert len(served) == 4 and served[-1] < len(model.passes) - 2  # not left until every short one was done
    assert all(b - a <= STARVE_PASSES + 1 for a, b in zip(served, served[1:]))


def test_queue_bound_rejects_with_retry_after_and_oversized_requests():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=10, max_batch_wait_ms=0, max_queue_tokens=30)
        with pytest.raises(RequestTooLargeError):
            await b.submit(seqs(0, 4, 10))
        held = asyncio.ensure_future(b.submit(seqs(0, 1, 10)))  # in the worker
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(b.submit(seqs(10 + i, 1, 10))) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as info:
            await b.submit(seqs(99, 1, 10))
        assert 1 <= info.value.retry_after <= 60
        gate.set()
        await asyncio.gather(held, *queued)
        assert b.queued_tokens == 0
        await b.aclose()

    run(main())


def test_cancelled_request_leaves_the_queue():
    gate = threading.Event()
    model = FakeModel(gate)

    async def main():
        b = MicroBatcher(model, 2, max_batch_tokens=10, max_batch_wait_ms=0)
        held = asyncio.ensure_future(b.submit(seqs(0, 1, 10)))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(b.submit(seqs(500, 5, 10)))
        await asyncio.sleep(0.01)
        assert b.queued_tokens == 50
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert b.queued_tokens == 0 and b.queued_requests == 0
        gate.set()
        await held
        await b.aclose()

    run(main())
    assert not any(s[0] >= 500 for p in model.passes for s in p)


def test_model_error_reaches_every_request_of_the_pass():
    def broken(_seqs):
        raise ValueError("boom")

    async def main():
        b = MicroBatcher(broken, 2, max_batch_tokens=100, max_batch_wait_ms=5)
        results = await asyncio.gather(b.submit(seqs(0, 1, 3)), b.submit(seqs(1, 1, 3)), return_exceptions=True)
        await b.aclose()
        return results

    assert all(isinstance(r, ValueError) for r in run(main()))
