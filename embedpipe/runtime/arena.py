"""Preallocated activations of a forward pass: named row buffers, and a pool that lends them out.

A recorded step program owns one ``Arena`` for its lifetime (its steps hold the buffers'
addresses).  Eager passes — batches too long or too varied to record — borrow one from the
model's ``ArenaPool`` instead of allocating every intermediate afresh: a fresh array per op and
layer lands on memory that is not in cache and often not mapped yet (a page fault and a kernel
zero-fill per 4 KiB), while a reused buffer is warm.  A pooled arena only grows, so after the
largest batch a model sees, passes allocate nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.threads import CACHE_LINE


class Arena:
    """Named float32 buffers of ``t`` rows, each starting on a cache line.

    ``rows(name, width)`` is the same memory every time it is asked for with the same name and
    width.  Buffers hold ``capacity`` rows; ``t`` (at most ``capacity``) is how many a pass
    uses, so an arena sized for a long batch serves shorter ones.
    """

    def __init__(self, t: int, capacity: int | None = None):
        capacity = t if capacity is None else capacity
        if not 0 <= t <= capacity:
            raise ValueError(f"arena of {capacity} rows cannot hold {t}")
        self.t, self.capacity = t, capacity
        self._buffers: dict[tuple[str, int], np.ndarray] = {}

    def rows(self, name: str, width: int) -> np.ndarray:
        """The (t, width) buffer called ``name`` (C-contiguous, on a cache line)."""
        buf = self._buffers.get((name, width))
        if buf is None:
            buf = self._buffers[(name, width)] = aligned_empty((self.capacity, width), np.float32, CACHE_LINE)
        return buf if self.t == self.capacity else buf[: self.t]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


class ArenaPool:
    """Arenas lent to eager passes, one per pass running at a time.

    ``take(t)`` lends the largest idle arena; one smaller than ``t`` rows is replaced by one
    with room for ``t`` and a quarter more (batches of similar size then fit without growing
    again).  When every arena is lent out (passes on several threads), a new one is made.
    Returned arenas are kept up to ``max_idle``, the largest first.
    """

    def __init__(self, max_idle: int = 1):
        self.max_idle = max_idle
        self._idle: list[Arena] = []
        self._lock = threading.Lock()

    @contextmanager
    def take(self, t: int) -> Iterator[Arena]:
        with self._lock:
            arena = self._idle.pop() if self._idle else None
        if arena is None:
            arena = Arena(t)
        elif arena.capacity < t:
            arena = Arena(t, max(t, arena.capacity + arena.capacity // 4))
        arena.t = t
        try:
            yield arena
        finally:
            with self._lock:
                self._idle.append(arena)
                self._idle.sort(key=lambda a: a.capacity)
                del self._idle[: max(0, len(self._idle) - self.max_idle)]

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._idle)
