"""Brute force: exactness of every search path, quantization schemes, the JIT row-dot kernel."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen.rowdot import ROWDOT, rowdot
from embedpipe.indexes import brute as brute_mod
from embedpipe.indexes import build_index
from embedpipe.indexes.quant import STORAGE_TYPES, dequantize, quantize

from .helpers import clustered, exact_topk, recall


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 4099])
def test_rowdot_kernel_matches_numpy(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, 48)) * 40).astype(dtype)
    q = rng.standard_normal(48).astype(np.float32)
    assert ROWDOT[np.dtype(dtype)].native() is not None, "JIT kernel failed to compile on this host"
    np.testing.assert_allclose(rowdot(x, q), x.astype(np.float64) @ q, rtol=1e-4, atol=1e-3)


def test_rowdot_odd_width_falls_back_to_numpy():
    x = np.ones((3, 17), np.int8)
    np.testing.assert_allclose(rowdot(x, np.ones(17, np.float32)), [17, 17, 17])


@pytest.mark.parametrize("quant", ["int8", "int16"])
@pytest.mark.parametrize("mode", ["vector", "dim"])
def test_quantize_round_trip_error_bound(quant, mode):
    x = clustered(200, 64)
    codes, scale, offset = quantize(x, quant, mode)
    assert codes.dtype == STORAGE_TYPES[quant].dtype
    err = np.abs(dequantize(codes, scale, mode, offset) - x)
    step = scale[:, None] if mode == "vector" else scale[None, :]
    assert (err <= step / 2 + 1e-7).all()


def test_dim_scale_is_centred_on_each_dimensions_range():
    """An off-centre dimension (values in [0.2, 0.3]) gets the step of its own width, not of
    max |x|: 2.5 times finer here. The shift is one constant per query, so scores stay exact."""
    rng = np.random.default_rng(0)
    x = np.c_[rng.uniform(0.2, 0.3, 500), rng.uniform(-0.5, 0.5, 500)].astype(np.float32)
    codes, scale, offset = quantize(x, "int8", "dim")
    np.testing.assert_allclose(scale, (x.max(0) - x.min(0)) / 254, rtol=1e-6)
    np.testing.assert_allclose(offset, (x.max(0) + x.min(0)) / 2, rtol=1e-6)
    assert codes.min() == -127 and codes.max() == 127
    assert np.abs(dequantize(codes, scale, "dim", offset) - x)[:, 0].max() <= 0.1 / 254 + 1e-7


@pytest.mark.parametrize("quant", ["fp32", "int16", "int8"])
@pytest.mark.parametrize("mode", ["vector", "dim"])
def test_scan_and_gemm_paths_agree_and_blocks_merge(monkeypatch, quant, mode):
    x, q = clustered(700, 64, seed=2), clustered(20, 64, seed=3)
    ix = build_index(x, kind="brute", quant=quant, scale_mode=mode)
    ix.use_jit = False  # the widening + BLAS path; the Q8_0 path is tested below
    monkeypatch.setattr(brute_mod, "BLOCK_ROWS", 128)  # several blocks → top-k merge
    s_gemm, r_gemm = ix.search_rows(q, 10)
    s_scan, r_scan = zip(*(ix.search_rows(qi, 10) for qi in q))
    np.testing.assert_allclose(np.concatenate(s_scan), s_gemm, rtol=1e-5, atol=1e-6)
    ref = dequantize(ix.codes, ix.scale, mode, ix.offset) @ q.T
    np.testing.assert_allclose(s_gemm, -np.sort(-ref.T, axis=1)[:, :10], rtol=1e-4, atol=1e-5)
    assert recall(r_gemm, np.argsort(-ref.T, axis=1)[:, :10]) >= 0.99


@pytest.mark.parametrize("mode", ["vector", "dim"])
def test_int8_recall_on_anisotropic_data(mode):
    """A few large dimensions (as transformer embeddings have): both scale schemes must keep
    recall@10 high; `bench index` reports which one wins on real embeddings."""
    x = clustered(2000, 128, noise=1.5, seed=4)
    x[:, :3] *= 4.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:100] + 0.05 * clustered(100, 128, seed=8)
    truth = exact_topk(x, q, 10)
    ix = build_index(x, kind="brute", quant="int8", scale_mode=mode)
    assert recall(ix.search_rows(q, 10)[1], truth) >= 0.97


@pytest.mark.parametrize("shape,k", [((7, 1000), 10), ((3, 5), 8), ((600, 2000), 1), ((1, 1), 1)])
def test_topk_kernel_matches_argpartition(shape, k):
    from embedpipe.codegen.topk import TOPK, topk_reference
    from embedpipe.indexes.base import topk_desc

    s = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
    assert TOPK.native() is not None, "top-k JIT kernel failed to compile on this host"
    got, want = topk_desc(s, k), topk_reference(s, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
