"""The row-scale twin of the int8 matmul (the kernel benchmark's ceiling) against the Q8_0
kernel it is compared with: where every block of a row has one scale, both compute the same
product, on every ISA this machine runs, ragged T and N, one and two threads."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import get_kernel_library, runnable_isas
from embedpipe.codegen.ggml_types import GGMLQuantizationType as Q
from embedpipe.codegen.ir_q8 import QK
from embedpipe.codegen.prepared import KernelInputError
from embedpipe.codegen.scale_ceiling import RowScaleKernel

ISAS = [s.name for s in runnable_isas()]


def _q8_0_rows(rng: np.random.Generator, n: int, k: int, equal_scales: bool) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 bytes of an (n, k) weight and its dequantized values; one scale per row if asked."""
    nb = k // QK
    d = rng.uniform(1e-3, 1e-2, (n, 1 if equal_scales else nb)).astype(np.float16)
    d = np.broadcast_to(d, (n, nb))
    q = rng.integers(-127, 128, (n, nb, QK)).astype(np.int8)
    raw = np.concatenate([np.ascontiguousarray(d).view(np.uint8).reshape(n, nb, 2), q.view(np.uint8)], axis=2)
    return raw.reshape(n, -1), (q.astype(np.float32) * d.astype(np.float32)[:, :, None]).reshape(n, k)


def _activations(rng: np.random.Generator, t: int, k: int) -> np.ndarray:
    """Rows whose every 32-element block has the same largest magnitude (so one scale a row)."""
    amax = rng.uniform(0.5, 3.0, (t, 1)).astype(np.float32)
    x = rng.uniform(-1, 1, (t, k)).astype(np.float32) * amax
    x[:, ::QK] = amax
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("t", "n", "k"), [(1, 16, 32), (37, 100, 320), (130, 96, 768)])
def test_row_scale_kernel_equals_q8_0_where_blocks_share_a_scale(isa, threads, t, n, k):
    lib = get_kernel_library(isa, threads)
    rng = np.random.default_rng(t * n + k)
    raw, w = _q8_0_rows(rng, n, k, equal_scales=True)
    x = _activations(rng, t, k)
    mm = lib.prepare_matmul(Q.Q8_0, raw, n, k)
    want = mm(x)
    got = RowScaleKernel(lib).prepare(mm, x).run()
    assert got.shape == (t, n)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # and both are the int8 product of these operands (activation quantization apart)
    np.testing.assert_allclose(got, x @ w.T, atol=0.02 * np.abs(x @ w.T).max())


def test_row_scale_kernel_uses_one_scale_per_row():
    """With scales that differ block to block it is not Q8_0 (the test above can fail)."""
    lib = get_kernel_library(None, 1)
    rng = np.random.default_rng(7)
    raw, _ = _q8_0_rows(rng, 48, 256, equal_scales=False)
    x = _activations(rng, 8, 256)
    mm = lib.prepare_matmul(Q.Q8_0, raw, 48, 256)
    want = mm(x)
    got = RowScaleKernel(lib).prepare(mm, x).run()
    assert np.abs(got - want).max() > 0.05 * np.abs(want).max()


def test_row_scale_kernel_refuses_a_float_weight_and_a_wrong_width():
    lib = get_kernel_library(None, 1)
    kernel = RowScaleKernel(lib)
    f32 = lib.prepare_matmul(Q.F32, np.zeros((16, 64), np.float32).view(np.uint8), 16, 64)
    with pytest.raises(KernelInputError, match="integer-family"):
        kernel.prepare(f32, np.zeros((2, 64), np.float32))
    raw, _ = _q8_0_rows(np.random.default_rng(0), 16, 64, equal_scales=True)
    mm = lib.prepare_matmul(Q.Q8_0, raw, 16, 64)
    with pytest.raises(KernelInputError, match="float32"):
        kernel.prepare(mm, np.zeros((2, 32), np.float32))
