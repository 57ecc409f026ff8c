"""A Python thread pool for callers that need one.

Kernels fork through ``ir_parallel`` (native threads, no GIL hand-offs); this pool remains for
Python-level fan-out such as the benchmark's peak probe.  ctypes releases the GIL for a
foreign call, so these threads also run native code in parallel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child inherits the pools but none of their threads: work submitted there
    would wait forever.  Start the child with no pools (and a fresh lock)."""
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _pool(threads: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embedpipe-kernel")
            _pools[threads] = pool
        return pool


def run_parallel(fn: Callable[[int, int], None], ranges: Sequence[tuple[int, int]], threads: int) -> None:
    """Call ``fn(a, b)`` for every range, spread over ``threads`` threads."""
    if threads <= 1 or len(ranges) <= 1:
        for a, b in ranges:
            fn(a, b)
        return
    futures = [_pool(threads).submit(fn, a, b) for a, b in ranges[1:]]
    fn(*ranges[0])
    for fut in futures:
        fut.result()
