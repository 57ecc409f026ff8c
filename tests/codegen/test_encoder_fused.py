"""Fused encoder row kernels (residual + LayerNorm + rows extended by the residuals of selected
blocks; product epilogue with bias and exact GELU) vs float64 oracles on every runnable
ISA, ragged shapes included."""

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
    ExtendBlocks,
    address,
    combine_reference,
    extend_reference,
    grid_reference,
    residual_norm_reference,
    row_ranges,
)
from embedpipe.codegen.ir_quantize import quantize_reference

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


def selections(d: int, seed: int) -> list[ExtendBlocks | None]:
    """No extension, then (when d allows) none, one, some out of order, and every block."""
    if d % QK:
        return [None]
    nb = d // QK
    some = np.random.default_rng(seed).permutation(nb)[: max(1, nb // 3)].tolist()
    return [None, ExtendBlocks(d, []), ExtendBlocks(d, [nb - 1]), ExtendBlocks(d, some), ExtendBlocks(d, range(nb))]


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("d", [32, 384, 40])
def test_residual_norm_matches_float64(isa, t, d):
    x, bias, res, w, beta = operands(t, d, t * 1000 + d)
    want = layer_norm64(x.astype(np.float64) + bias + res, w, beta, 1e-12)
    for extend in selections(d, t + d):
        out, ext = RESIDUAL_NORM.on(isa)(x, bias, res, w, beta, 1e-12, extend, threads=2)
        assert out.dtype == np.float32 and out.shape == (t, d)
        assert np.abs(out - want).max() <= 2e-5 * (1 + np.abs(want).max())
        if extend is None:
            assert ext is None
            continue
        assert ext.shape == (t, d + QK * len(extend.blocks))
        assert np.array_equal(ext[:, :d], out)
        if not extend.blocks:
            continue
        # the int8 quantizer puts each selected block on a grid value hi with out = hi + lo
        q, dq = quantize_reference(out)
        hi = (q.reshape(t, -1, QK) * dq[:, :, None]).reshape(t, d)
        cols = extend.columns()
        lo = ext[:, d:]
        assert np.abs(hi[:, cols] + lo - out[:, cols]).max() <= 1e-6 * (1 + np.abs(out).max())
        step = np.repeat(dq, QK, axis=1)[:, cols]
        assert (np.abs(lo) <= step / 2 * (1 + 1e-5) + 1e-30).all()
        # the twin extends the same way (a residual may differ by one grid step where the two
        # normalized values differ by an ulp at a rounding tie)
        ref_out, ref_ext = residual_norm_reference(x, bias, res, w, beta, 1e-12, extend)
        assert np.array_equal(ref_ext, extend_reference(ref_out, extend))
        assert np.mean(np.isclose(ref_ext[:, d:], lo, rtol=1e-4, atol=1e-6 * np.abs(out).max())) > 0.99


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("n", [7, 1152])
def test_combine_matches_float64(isa, t, n):
    rng = np.random.default_rng(t + n)
    y = (rng.standard_normal((t, n)) * 3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for gelu in (False, True):
        got = COMBINE.on(isa)(y, bias, gelu, threads=2)
        s = y.astype(np.float64) + bias
        want = gelu64(s) if gelu else s
        assert got.shape == (t, n) and np.abs(got - want).max() <= 2e-6 * (1 + np.abs(want).max())
        assert np.abs(got - combine_reference(y, bias, gelu)).max() <= 1e-6 * (1 + np.abs(want).max())


def test_extended_product_removes_the_selected_blocks_error():
    """Q(ext)·[W | W_sel]ᵀ on the int8 kernel equals Q(X)·Wᵀ with the selected blocks' error
    nearly gone: with the outlier blocks selected it is far closer to X·Wᵀ (fp32 X, the same
    int8 W) than the int8 kernel on X itself, and with every block selected it is the full
    two-level split."""
    t, k, n = 33, 384, 96
    x, bias, res, w, beta = operands(t, k, 7)
    lib = get_kernel_library(threads=2)
    weights = np.random.default_rng(3).standard_normal((n, k)).astype(np.float32)
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0).reshape(n, k // QK, -1)
    w_deq = gguf.quants.dequantize(raw.reshape(n, -1), gguf.GGMLQuantizationType.Q8_0).reshape(n, k)
    exact = None
    errors = {}
    for name, blocks in (("none", []), ("outliers", [0]), ("all", range(k // QK))):
        extend = ExtendBlocks(k, blocks)
        out, ext = RESIDUAL_NORM(x, bias, res, w, beta, 1e-12, extend)
        exact = out.astype(np.float64) @ w_deq.T.astype(np.float64)
        wide = np.concatenate([raw, raw[:, list(extend.blocks)]], axis=1).reshape(n, -1)
        product = lib.prepare_matmul(gguf.GGMLQuantizationType.Q8_0, wide, n, extend.ext_width)
        got = product(ext)
        # oracle: X on its grid, the selected blocks corrected by their residuals on theirs
        seen = grid_reference(out)
        seen[:, extend.columns()] += grid_reference(np.ascontiguousarray(ext[:, k:])) if extend.blocks else 0
        oracle = seen.astype(np.float64) @ w_deq.T.astype(np.float64)
        assert np.abs(got - oracle).max() <= 1e-5 * np.abs(oracle).max()
        errors[name] = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    direct = lib.prepare_matmul(gguf.GGMLQuantizationType.Q8_0, raw.reshape(n, -1), n, k)(out)
    assert np.linalg.norm(direct - exact) / np.linalg.norm(exact) == pytest.approx(errors["none"], rel=1e-5)
    assert errors["outliers"] < errors["none"] / 2, errors
    assert errors["all"] < errors["none"] / 50, errors


def test_validation_is_one_clear_error():
    x, bias, res, w, beta = operands(3, 40, 1)
    with pytest.raises(KernelInputError, match="multiple of 32"):
        ExtendBlocks(40, [0])
    with pytest.raises(KernelInputError, match="distinct block numbers"):
        ExtendBlocks(64, [2])
    with pytest.raises(KernelInputError, match="distinct block numbers"):
        ExtendBlocks(64, [1, 1])
    with pytest.raises(KernelInputError, match="ExtendBlocks of that width"):
        RESIDUAL_NORM(x, bias, res, w, beta, 1e-12, ExtendBlocks(64, [1]))
    with pytest.raises(KernelInputError, match="float32"):
        RESIDUAL_NORM(x.astype(np.float64), bias, res, w, beta, 1e-12, False)
    with pytest.raises(KernelInputError, match="residual_norm bias"):
        RESIDUAL_NORM(x, bias[:-1], res, w, beta, 1e-12, False)
    with pytest.raises(KernelInputError, match="2-D"):
        COMBINE(np.zeros(8, np.float32), np.zeros(8, np.float32), False)
    with pytest.raises(KernelInputError, match="combine bias"):
        COMBINE(np.zeros((5, 8), np.float32), np.zeros(7, np.float32), False)


def test_address_is_the_data_address_for_writable_read_only_and_empty_arrays():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro = a.copy()
    ro.flags.writeable = False
    for arr in (a, ro, a[1:], np.empty((0, 4), np.float32)):
        assert address(arr) == arr.ctypes.data
    assert row_ranges(10, 1) == [(0, 10)] and row_ranges(10, 2) == [(0, 5), (5, 10)]


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
def test_output_buffers_get_the_same_values_and_bad_ones_are_refused(isa):
    """Given ``out`` / ``ext_out`` buffers (a step program's arena), the kernels write there what
    they return otherwise; a buffer of the wrong shape or type, or one overlapping an input,
    is one clear error."""
    t, d = 33, 64
    x, bias, res, w, beta = operands(t, d, 7)
    extend = ExtendBlocks(d, [1])
    norm = RESIDUAL_NORM.on(isa)
    want, want_ext = norm(x, bias, res, w, beta, 1e-12, extend, threads=2)
    out, ext = np.full((t, d), np.nan, np.float32), np.full((t, extend.ext_width), np.nan, np.float32)
    got, got_ext = norm(x, bias, res, w, beta, 1e-12, extend, threads=2, out=out, ext_out=ext)
    assert got is out and got_ext is ext
    assert np.array_equal(out, want) and np.array_equal(ext, want_ext)
    combine = COMBINE.on(isa)
    act = np.full((t, d), np.nan, np.float32)
    assert combine(x, bias, True, threads=2, out=act) is act
    assert np.array_equal(act, combine(x, bias, True, threads=2))
    with pytest.raises(KernelInputError, match="out must be"):
        norm(x, bias, res, w, beta, 1e-12, None, out=np.zeros((t, d + 1), np.float32))
    with pytest.raises(KernelInputError, match="out must be"):
        norm(x, bias, res, w, beta, 1e-12, None, out=res)
    with pytest.raises(KernelInputError, match="out must be"):
        norm(x, bias, res, w, beta, 1e-12, extend, out=out, ext_out=np.zeros((t, d), np.float32))
    with pytest.raises(KernelInputError, match="without blocks"):
        norm(x, bias, res, w, beta, 1e-12, None, ext_out=ext)
    with pytest.raises(KernelInputError, match="out must be"):
        combine(x, bias, False, out=x)
    with pytest.raises(KernelInputError, match="out must be"):
        combine(x, bias, False, out=np.zeros((t, d), np.float64))


def test_copied_and_pickled_extend_blocks_point_at_their_own_block_numbers():
    import copy
    import pickle

    ext = ExtendBlocks(128, (3, 1))
    for twin in (copy.deepcopy(ext), pickle.loads(pickle.dumps(ext)), copy.copy(ext)):
        assert twin.blocks == ext.blocks and twin.width == ext.width
        assert twin.address == twin.array.ctypes.data and not twin.array.flags.writeable
    rng = np.random.default_rng(0)
    x, res = (rng.standard_normal((5, 128)).astype(np.float32) for _ in range(2))
    vecs = [rng.standard_normal(128).astype(np.float32) for _ in range(3)]
    run = RESIDUAL_NORM.on(runnable_isas()[0])
    out, ext_rows = run(x, vecs[0], res, vecs[1], vecs[2], 1e-6, pickle.loads(pickle.dumps(ext)))
    assert np.array_equal(ext_rows, run(x, vecs[0], res, vecs[1], vecs[2], 1e-6, ext)[1])
