"""Repacked weights copied to huge-page memory: same values, aligned, advised, kept alive."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from embedpipe.codegen import huge_pages

THP = os.path.exists("/sys/kernel/mm/transparent_hugepage") and huge_pages._ADVICE is not None


def _vm_flags(address: int) -> list[str]:
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(part, 16) for part in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    return []


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_weight_copy_is_equal_aligned_and_advised():
    a = np.random.default_rng(0).integers(0, 2**32, (300, 1111), dtype=np.uint32)
    b = huge_pages.weight_copy(a)
    assert b is not a and not np.shares_memory(a, b)
    assert b.dtype == a.dtype and b.shape == a.shape and b.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert b.ctypes.data % huge_pages.ALIGN == 0
    assert "hg" in _vm_flags(b.ctypes.data)


def test_small_or_strided_arrays_stay_where_they_are():
    small = np.ones(1000, np.float32)
    assert huge_pages.weight_copy(small) is small
    strided = np.ones((2000, 400), np.float32)[:, ::2]
    assert huge_pages.weight_copy(strided) is strided


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_arrays_outlive_their_chunk_and_fill_new_ones():
    rng = np.random.default_rng(1)
    size = huge_pages.CHUNK_BYTES // 3 + 4096  # three do not fit one chunk
    sources = [rng.integers(0, 255, size, dtype=np.uint8) for _ in range(4)]
    copies = [huge_pages.weight_copy(s) for s in sources]
    starts = sorted(c.ctypes.data for c in copies)
    assert all(b - a >= size for a, b in zip(starts, starts[1:]))  # no overlap
    del sources[1:3], copies[1:3]
    gc.collect()
    big = huge_pages.weight_copy(np.full(huge_pages.CHUNK_BYTES + 5, 7, np.uint8))  # a chunk of its own
    assert (big == 7).all()
    for s, c in zip(sources, copies):
        np.testing.assert_array_equal(s, c)


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_consecutive_copies_share_a_chunk():
    """Weights are carved one after another from one mapping, not a mapping (and a partly used
    huge page) each."""
    copies = [huge_pages.weight_copy(np.full(MB, i, np.uint8)) for i in range(4)]
    starts = [c.ctypes.data for c in copies]
    assert starts[1:] == [s + MB for s in starts[:-1]]
    for i, c in enumerate(copies):
        assert (c == i).all()


MB = 1 << 20
