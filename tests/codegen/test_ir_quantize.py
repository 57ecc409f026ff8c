"""The emitted activation quantizer against its numpy twin, bit for bit, on every ISA this
machine can run: block counts that exercise each group size of the grouped path and the
one-block tail, rows of very different magnitudes, all-zero blocks and padding rows."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import get_kernel_library, runnable_isas
from embedpipe.codegen.ir_quantize import GROUPS, QK, act_elem_bytes, quantize_reference

ISAS = [s.name for s in runnable_isas()]
# every mix of the group sizes and a tail: 1..3 (tail only), 4, 8, 16, 24 (16+8), 28 (16+8+4),
# 31 (+3 tail), 36 (16+16+4), 63 (16·3+8+4+3)
BLOCKS = [1, 3, 4, 7, 8, 12, 15, 16, 17, 24, 28, 31, 36, 63]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("blocks", BLOCKS)
def test_quantize_kernel_is_the_reference_bit_for_bit(isa, blocks):
    lib = get_kernel_library(isa, 1)
    rng = np.random.default_rng(blocks)
    t, padded, k = 5, 8, blocks * QK
    x = (rng.standard_normal((t, k)) * rng.choice([1e-30, 1e-3, 1.0, 3e4], (t, 1))).astype(np.float32)
    x[1, :QK] = 0  # an all-zero block: scale 0, codes 0
    x[3, -QK:] = -x[3, -QK:]
    x[4, 5] = 127.0 * np.abs(x[4, :QK]).max()  # a block whose other codes all round to 0 or ±1
    codes = np.int8 if act_elem_bytes(lib.isa) == 1 else np.int16
    xq = np.full((padded, k), 99, codes)
    xd = np.full((padded, blocks), 9.0, np.float32)
    xc = np.full((padded, blocks), 9, np.int32)
    lib._quantize(x.ctypes.data, xq.ctypes.data, xd.ctypes.data, xc.ctypes.data, t, k, 0, padded)
    q_ref, d_ref = quantize_reference(x)
    np.testing.assert_array_equal(xq[:t], q_ref)
    np.testing.assert_array_equal(xd[:t].view(np.int32), d_ref.view(np.int32))
    np.testing.assert_array_equal(xc[:t], -128 * q_ref.reshape(t, blocks, QK).sum(axis=2, dtype=np.int32))
    assert not xq[t:].any() and not xd[t:].any() and not xc[t:].any()  # padding rows zero-filled


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_kernel_writes_only_its_rows(isa):
    """Rows [t0, t1) only: a thread's share never touches another's rows."""
    lib = get_kernel_library(isa, 1)
    blocks, t = max(GROUPS) + 3, 6
    k = blocks * QK
    x = np.random.default_rng(1).standard_normal((t, k)).astype(np.float32)
    codes = np.int8 if act_elem_bytes(lib.isa) == 1 else np.int16
    xq = np.full((t, k), 99, codes)
    xd = np.full((t, blocks), 9.0, np.float32)
    xc = np.full((t, blocks), 9, np.int32)
    lib._quantize(x.ctypes.data, xq.ctypes.data, xd.ctypes.data, xc.ctypes.data, t, k, 2, 4)
    q_ref, d_ref = quantize_reference(x)
    np.testing.assert_array_equal(xq[2:4], q_ref[2:4])
    np.testing.assert_array_equal(xd[2:4], d_ref[2:4])
    for rows in (slice(0, 2), slice(4, t)):
        assert (xq[rows] == 99).all() and (xd[rows] == 9.0).all() and (xc[rows] == 9).all()
