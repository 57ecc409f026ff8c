"""Arenas hand out the same cache-line-aligned rows by name; the pool lends one arena per
concurrent pass, grows it for longer passes and reuses it for shorter ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedpipe.codegen.threads import CACHE_LINE
from embedpipe.runtime.arena import Arena, ArenaPool


def test_rows_are_the_same_aligned_memory_by_name_and_width():
    arena = Arena(5, capacity=9)
    a = arena.rows("x", 7)
    assert a.shape == (5, 7) and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.ctypes.data % CACHE_LINE == 0
    assert np.shares_memory(a, arena.rows("x", 7))
    assert not np.shares_memory(a, arena.rows("x", 8)) and not np.shares_memory(a, arena.rows("y", 7))
    assert arena.nbytes == 9 * (7 + 8 + 7) * 4


def test_an_arena_cannot_hold_more_rows_than_its_capacity():
    with pytest.raises(ValueError, match="cannot hold"):
        Arena(10, capacity=4)


def test_the_pool_reuses_an_arena_for_shorter_passes_and_grows_it_for_longer_ones():
    pool = ArenaPool()
    with pool.take(100) as first:
        x = first.rows("x", 4)
    with pool.take(60) as second:
        assert second is first and second.rows("x", 4).shape == (60, 4)
        assert np.shares_memory(second.rows("x", 4), x)
    with pool.take(101) as grown:
        assert grown is not first and grown.capacity >= 125 and grown.rows("x", 4).shape == (101, 4)
    with pool.take(120) as again:
        assert again is grown


def test_concurrent_passes_get_distinct_arenas_and_the_largest_is_kept():
    pool = ArenaPool(max_idle=1)
    inside = threading.Barrier(3)
    seen: list[Arena] = []

    def work(t: int) -> None:
        with pool.take(t) as arena:
            arena.rows("x", 2)[...] = t
            seen.append(arena)
            inside.wait(timeout=30)
            assert (arena.rows("x", 2) == t).all()

    threads = [threading.Thread(target=work, args=(t,)) for t in (10, 20, 30)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len({id(a) for a in seen}) == 3
    assert pool.held_bytes == 30 * 2 * 4
    with pool.take(5) as arena:
        assert arena.capacity == 30
