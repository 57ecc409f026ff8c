"""`Builder`: vectors handed over with ``copy=False`` are normalized where they lie (no second
full-size float copy) and build exactly the index a copying build makes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from embedpipe.indexes import Builder
from embedpipe.indexes.base import normalize_rows

from .helpers import clustered


def _raw(n: int, d: int, seed: int = 4) -> np.ndarray:
    """Rows that are not unit length, so normalizing changes every one."""
    scale = np.random.default_rng(seed).uniform(0.5, 3.0, (n, 1)).astype(np.float32)
    return np.ascontiguousarray(clustered(n, d, seed=seed) * scale)


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_handed_over_vectors_build_the_same_file_and_the_fp32_index_keeps_them(tmp_path, quant):
    x = _raw(600, 32)
    kept = x.copy()
    copied = Builder("hnsw", quant, m=6, ef_construction=24).add(x).build()
    np.testing.assert_array_equal(x, kept)  # the default leaves the caller's array alone
    given = Builder("hnsw", quant, m=6, ef_construction=24).add(x, copy=False).build()
    copied.save(tmp_path / "a")
    given.save(tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    np.testing.assert_array_equal(x, normalize_rows(kept))  # normalized where it lies
    assert np.shares_memory(given.codes, x) == (quant == "fp32")


def test_arrays_that_cannot_be_reused_are_copied_and_left_alone():
    x = _raw(300, 16)
    want = Builder("brute").add(x).build().codes
    frozen = x.copy()
    frozen.flags.writeable = False
    strided = np.asfortranarray(x)
    for arr in (frozen, strided):
        before = arr.copy()
        got = Builder("brute").add(arr, copy=False).build().codes
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(arr, before)
    # a Matryoshka width below the array's takes a truncated copy
    before = x.copy()
    narrow = Builder("brute", dim=8).add(x, copy=False).build()
    np.testing.assert_array_equal(x, before)
    assert narrow.codes.shape == (300, 8) and not np.shares_memory(narrow.codes, x)


def test_a_memory_map_view_is_not_taken_as_ours(tmp_path):
    x = _raw(200, 16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r+")
    Builder("brute").add(mm).build()  # default copy=True: np.asarray's view is not a new array
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)


def test_several_adds_and_converted_arrays_are_joined_once_and_normalized_in_place():
    x = _raw(400, 16)
    whole = Builder("brute").add(x).build().codes
    parts = Builder("brute").add(x[:150]).add(x[150:].astype(np.float64)).build().codes
    np.testing.assert_array_equal(parts, whole)


def test_a_handed_over_build_allocates_no_second_copy_of_the_vectors(monkeypatch):
    from embedpipe.indexes import base

    monkeypatch.setattr(base, "NORM_BLOCK", 256)  # one block's temporaries, as in a big corpus
    x = _raw(4000, 512)  # 8 MB of vectors; the graph is ~0.3 MB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        ix = Builder("hnsw", m=8, ef_construction=16).add(x, copy=False).build()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert np.shares_memory(ix.codes, x)
    assert peak < 0.5 * x.nbytes, f"the build allocated {peak} bytes beside {x.nbytes} of vectors"
