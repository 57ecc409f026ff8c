"""Per-thread output slices of the matmuls start on cache lines (no false sharing)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from embedpipe.codegen import get_kernel_library
from embedpipe.codegen.isa import ISAS
from embedpipe.codegen.library import TILES, PreparedMatmul
from embedpipe.codegen.threads import CACHE_LINE


@pytest.mark.parametrize("isa", sorted(TILES))
@pytest.mark.parametrize("family", ["int", "float"])
@pytest.mark.parametrize("panels", [7, 24, 80, 81])
def test_panel_splits_fall_on_cache_lines(isa, family, panels):
    """A panel split hands each thread whole lines of every output row, also where a panel is
    narrower than a line (AVX2 int: 8 floats)."""
    int_tile, float_tile = TILES[isa]
    tile = int_tile if family == "int" else float_tile
    nr = ISAS[isa].lanes * tile.nv
    lib = get_kernel_library(threads=2)
    w = PreparedMatmul(lib, GGMLQuantizationType.Q8_0, panels * nr, 1 << 20, family, ())
    how, ranges = w._plan(tile.mr, tile.mr, panels, nr)
    assert how == "panels"
    for a, _ in ranges:
        assert (a * nr * 4) % CACHE_LINE == 0, (a, nr)


@pytest.mark.parametrize("t", [1, 5, 16, 200])
def test_outputs_are_line_aligned_and_splits_line_multiples(t):
    lib = get_kernel_library(threads=2)
    n, k = 1280, 768
    rng = np.random.default_rng(t)
    w = lib.prepare_int8(rng.integers(-127, 128, (n, k), dtype=np.int8), np.full(n, 0.01, np.float32))
    assert isinstance(w, PreparedMatmul)
    y = w(rng.standard_normal((t, k)).astype(np.float32))
    assert y.ctypes.data % CACHE_LINE == 0
    how, ranges = w._plan(t, lib.int_tile.mr, w.packed[0].shape[0])
    nr = lib.isa.lanes * lib.int_tile.nv
    for a, _ in ranges:
        offset = a * (nr if how == "panels" else n) * 4
        assert offset % CACHE_LINE == 0, (how, a)
    assert GGMLQuantizationType.Q8_0 == w.qtype
