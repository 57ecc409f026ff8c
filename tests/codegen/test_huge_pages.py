"""Packed weights in huge-page memory: aligned, advised, carved one after another, kept alive."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from embedpipe.codegen import huge_pages
from embedpipe.codegen.quant_formats import weight_empty
from tests.proc_maps import vm_flags

THP = os.path.exists("/sys/kernel/mm/transparent_hugepage") and huge_pages._ADVICE is not None


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_weight_arrays_are_aligned_advised_and_writable():
    a = weight_empty((300, 1111), np.uint32)
    assert a.shape == (300, 1111) and a.dtype == np.uint32 and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % huge_pages.ALIGN == 0
    assert "hg" in vm_flags(a.ctypes.data)
    a[...] = np.arange(a.size, dtype=np.uint32).reshape(a.shape)
    assert a[-1, -1] == a.size - 1


def test_small_weights_use_ordinary_memory():
    assert huge_pages.carve(huge_pages.MIN_BYTES - 1) is None
    small = weight_empty((7, 33), np.float32)
    assert small.shape == (7, 33) and small.ctypes.data % 64 == 0


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_arrays_outlive_their_chunk_and_fill_new_ones():
    size = huge_pages.CHUNK_BYTES // 3 + 4096  # three do not fit one chunk
    parts = [huge_pages.carve(size) for _ in range(4)]
    for i, part in enumerate(parts):
        part[:] = i
    starts = sorted(p.ctypes.data for p in parts)
    assert all(b - a >= size for a, b in zip(starts, starts[1:]))  # no overlap
    del parts[1:3]
    gc.collect()
    big = huge_pages.carve(huge_pages.CHUNK_BYTES + 5)  # a chunk of its own
    big[:] = 7
    assert (big == 7).all() and (parts[0] == 0).all() and (parts[1] == 3).all()


@pytest.mark.skipif(not THP, reason="needs Linux with transparent huge pages")
def test_consecutive_weights_share_a_chunk():
    """Weights are carved one after another from one mapping, not a mapping (and a partly used
    huge page) each."""
    parts = [huge_pages.carve(MB) for _ in range(4)]
    starts = [p.ctypes.data for p in parts]
    assert starts[1:] == [s + MB for s in starts[:-1]]


MB = 1 << 20
