"""Fused encoder row kernels (residual + LayerNorm + hi/lo split; split-halves epilogue with
bias and exact GELU) vs float64 oracles on every runnable ISA, ragged shapes included."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, get_kernel_library, runnable_isas
from embedpipe.codegen.encoder_fused import (
    COMBINE,
    QK,
    RESIDUAL_NORM,
    address,
    combine_reference,
    residual_norm_reference,
    row_ranges,
)
from embedpipe.codegen.ir_q8 import quantize_reference

ISAS = [s for s in runnable_isas()]
ROWS = [1, 2, 33, 257]


def layer_norm64(a: np.ndarray, w: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    a = a.astype(np.float64)
    c = a - a.mean(-1, keepdims=True)
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * w + beta


def gelu64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def operands(t: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((t, d)) * 4).astype(np.float32)
    res = rng.standard_normal((t, d)).astype(np.float32)
    x[:, : min(d, 3)] *= 30  # a few outlier features, as LayerNorm inputs of BERT have
    bias, w, beta = (rng.standard_normal(d).astype(np.float32) for _ in range(3))
    return x, bias, res, w, beta


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("d", [32, 384, 40])
def test_residual_norm_matches_float64(isa, t, d):
    x, bias, res, w, beta = operands(t, d, t * 1000 + d)
    for split in (False, True) if d % QK == 0 else (False,):
        out, sp = RESIDUAL_NORM.on(isa)(x, bias, res, w, beta, 1e-12, split, threads=2)
        want = layer_norm64(x.astype(np.float64) + bias + res, w, beta, 1e-12)
        assert out.dtype == np.float32 and out.shape == (t, d)
        assert np.abs(out - want).max() <= 2e-5 * (1 + np.abs(want).max())
        if not split:
            assert sp is None
            continue
        hi, lo = sp[:t], sp[t:]
        # hi lies on its block's Q8_0 grid: the int8 quantizer reproduces it exactly
        q, dq = quantize_reference(hi)
        assert np.array_equal((q.reshape(t, -1, QK) * dq[:, :, None]).reshape(t, d), hi)
        assert np.array_equal(hi + lo, out) or np.abs(hi + lo - out).max() <= 1e-6 * np.abs(out).max()
        # lo is within half a grid step of zero
        step = np.repeat(dq, QK, axis=1)
        assert (np.abs(lo) <= step / 2 * (1 + 1e-5) + 1e-30).all()
        # the twin splits the same way (hi may take the neighbouring grid step where the two
        # normalized values differ by an ulp at a rounding tie; hi + lo agrees)
        ref_out, ref_sp = residual_norm_reference(x, bias, res, w, beta, 1e-12, True)
        assert np.abs(ref_sp[:t] + ref_sp[t:] - (hi + lo)).max() <= 2e-5 * (1 + np.abs(ref_out).max())
        assert np.mean(np.isclose(ref_sp[:t], hi, rtol=1e-5, atol=1e-30)) > 0.99


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("n", [7, 1152])
def test_combine_matches_float64(isa, t, n):
    rng = np.random.default_rng(t + n)
    y = (rng.standard_normal((2 * t, n)) * 3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for halves in (False, True):
        for gelu in (False, True):
            operand = y if halves else np.ascontiguousarray(y[:t])
            got = COMBINE.on(isa)(operand, bias, t, halves, gelu, threads=2)
            s = y[:t].astype(np.float64) + bias + (y[t:] if halves else 0)
            want = gelu64(s) if gelu else s
            assert got.shape == (t, n) and np.abs(got - want).max() <= 2e-6 * (1 + np.abs(want).max())
            assert np.abs(got - combine_reference(operand, bias, t, halves, gelu)).max() <= 1e-6 * (
                1 + np.abs(want).max()
            )


def test_split_product_is_near_fp32_activation_accuracy():
    """hi·Wᵀ + lo·Wᵀ on the int8 kernel approximates X·Wᵀ (fp32 X, the same int8 W) far
    better than the int8 kernel on X itself: the reason QKV/FFN-up run on the split."""
    t, k, n = 33, 384, 96
    x, bias, res, w, beta = operands(t, k, 7)
    lib = get_kernel_library(threads=2)
    weights = np.random.default_rng(3).standard_normal((n, k)).astype(np.float32)
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    product = lib.prepare_matmul(gguf.GGMLQuantizationType.Q8_0, raw.reshape(n, -1), n, k)
    w_deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(n, k).astype(np.float64)
    out, sp = RESIDUAL_NORM(x, bias, res, w, beta, 1e-12, True)
    exact = out.astype(np.float64) @ w_deq.T
    via_split = COMBINE(product(sp), np.zeros(n, np.float32), t, True, False)
    direct = product(out)
    err_split = np.linalg.norm(via_split - exact) / np.linalg.norm(exact)
    err_direct = np.linalg.norm(direct - exact) / np.linalg.norm(exact)
    assert err_split < err_direct / 50, (err_split, err_direct)


def test_validation_is_one_clear_error():
    x, bias, res, w, beta = operands(3, 40, 1)
    with pytest.raises(KernelInputError, match="multiple of 32"):
        RESIDUAL_NORM(x, bias, res, w, beta, 1e-12, True)
    with pytest.raises(KernelInputError, match="float32"):
        RESIDUAL_NORM(x.astype(np.float64), bias, res, w, beta, 1e-12, False)
    with pytest.raises(KernelInputError, match="residual_norm bias"):
        RESIDUAL_NORM(x, bias[:-1], res, w, beta, 1e-12, False)
    with pytest.raises(KernelInputError, match="rows"):
        COMBINE(np.zeros((5, 8), np.float32), np.zeros(8, np.float32), 3, True, False)


def test_address_is_the_data_address_for_writable_read_only_and_empty_arrays():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro = a.copy()
    ro.flags.writeable = False
    for arr in (a, ro, a[1:], np.empty((0, 4), np.float32)):
        assert address(arr) == arr.ctypes.data
    assert row_ranges(10, 1) == [(0, 10)] and row_ranges(10, 2) == [(0, 5), (5, 10)]
