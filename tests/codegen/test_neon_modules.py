"""On AArch64, the kernels the fixed harness of ``test_neon_emulation`` does not reach: the
kernel modules outside the model library (attention for EmbeddingGemma and for the BERT family,
the row gather, the encoder's LayerNorm and bias epilogue, brute-force search's row dots and
top-k) and the BERT family's library kernels (exact GELU, LayerNorm, the bias + GELU work
kernel), run under qemu-user on the items their real drivers make (``qemu_tasks``) and checked
against the same oracles as on the host. The index kernels' are in
``tests/indexes/test_neon_index_kernels.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.codegen import attention as A
from embedpipe.codegen import encoder_attention as EA
from embedpipe.codegen import gather as G
from embedpipe.codegen.isa import ISAS
from embedpipe.codegen.library import KernelLibrary
from embedpipe.codegen.quant_formats import aligned_empty
from tests.codegen.helpers import random_raw
from tests.codegen.qemu_tasks import NEON_ISAS, HarnessCache, QemuNative, qemu_library, requires_emulation
from tests.codegen.test_attention import oracle as attention_oracle
from tests.codegen.test_attention import packed
from tests.codegen.test_encoder_attention import oracle as encoder_oracle
from tests.codegen.test_encoder_attention import product

pytestmark = [pytest.mark.emulation, requires_emulation]


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> HarnessCache:
    return HarnessCache(tmp_path_factory)


# (lengths, n_q, n_kv, d, dv, half_window) from the host suite: ragged T, window edges, grouped
# heads, the key and query tiles, a scalar tail for ragged value widths
ATTENTION_CASES = [
    ([1, 2, 31, 33], 3, 1, 64, 64, None),
    ([1, 2, 31, 33], 3, 1, 24, 24, 2),
    ([95, 96, 97, 130], 1, 1, 8, 24, 64),
    ([63, 64, 65, 129], 2, 2, 8, 8, 65),
    ([9], 2, 1, 8, 8, 0),
    ([70], 6, 3, 20, 36, 16),
]


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"T{'-'.join(map(str, c[0]))}_h{c[1]}/{c[2]}_hw{c[5]}")
def test_neon_attention_matches_float64(harnesses, isa_name, case):
    lengths, n_q, n_kv, d, dv, hw = case
    q, k, v, starts, lens = packed(lengths, n_q, n_kv, d, dv, seed=len(lengths) * d)
    out = np.full((q.shape[0], n_q * dv), np.nan, np.float32)
    cache: dict = {}
    native = QemuNative(
        A.ATTENTION, ISAS[isa_name], harnesses(A.ATTENTION_MODULE, isa_name), lambda: [q, k, v, out, *cache.values()]
    )
    got = A.ATTENTION.drive(native, q, k, v, starts, lens, hw, threads=2, cache=cache, out=out)
    assert native.runs == 1
    ref = attention_oracle(q, k, v, starts, lens, hw)
    assert np.abs(got - ref).max() <= 3e-6 * np.abs(ref).max()


ENCODER_CASES = [([2, 1], 3, 32), ([8, 9, 7], 3, 16), ([31, 33], 4, 64), ([17, 16], 2, 7)]


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("lens,h,d", ENCODER_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_neon_encoder_attention_matches_float64(harnesses, isa_name, lens, h, d, with_bias):
    rng = np.random.default_rng(len(lens) * 100 + d)
    lengths = np.array(lens, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    t = int(lengths.sum())
    y, qb = product((rng.standard_normal((t, 3 * h * d + 5)) * 2).astype(np.float32), rng)
    bias = rng.standard_normal((h, max(lens) + 2, max(lens) + 2)).astype(np.float32) if with_bias else None
    out = np.full((t, h * d), np.nan, np.float32)
    exe = harnesses(EA.ENCODER_ATTENTION_MODULE, isa_name)
    native = QemuNative(EA.ENCODER_ATTENTION, ISAS[isa_name], exe, lambda: [y, qb, starts, lengths, bias, out])
    got = EA.ENCODER_ATTENTION.drive(native, y, qb, t, h, d, starts, lengths, 0.2, bias, threads=2, out=out)
    want = encoder_oracle(y + qb, h, d, starts, lengths, 0.2, bias)
    assert np.abs(got - want).max() <= 2e-5


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("scale", [1.0, 768**0.5])
def test_neon_gather_rows_equal_the_numpy_lookup(harnesses, isa_name, qtype, scale):
    rng = np.random.default_rng(3)
    rows, d = 50, 96
    raw = random_raw(qtype, rows, d, rng) if qtype == Q.Q8_0 else rng.standard_normal((rows, d)).astype(np.float32)
    table = G.GatherTable(np.ascontiguousarray(raw), qtype, rows, d)
    index = rng.integers(0, rows, 37).astype(np.int64)
    out = np.full((index.size, d), np.nan, np.float32)
    exe = harnesses(G.GATHER_MODULE, isa_name)
    native = QemuNative(G.GATHER, ISAS[isa_name], exe, lambda: [table.data, index, out])
    got = G.GATHER.drive(native, table, index, scale, threads=2, out=out)
    np.testing.assert_array_equal(got, G.gather_reference(table, index, scale))


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_gelu_erf_and_layer_norm(harnesses, isa_name):
    """The BERT family's element-wise kernels of the model library (the NEON harness of
    ``test_neon_emulation`` does not reach them), against float64."""
    from tests.runtime.test_encoder_ops import _gelu64, _ln64

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(1001) * 4).astype(np.float32)
    x[:3] = [0.0, -30.0, 30.0]
    w, b = rng.standard_normal(129).astype(np.float32), rng.standard_normal(129).astype(np.float32)
    rows = (rng.standard_normal((37, 129)) * 3 + 40).astype(np.float32)
    rows[:, 0] *= 30  # an outlier feature over a large mean
    lib = qemu_library(harnesses.library(isa_name), lambda: [x, w, b, rows])
    assert np.abs(KernelLibrary.gelu_erf(lib, x) - _gelu64(x)).max() < 1e-6
    np.testing.assert_allclose(
        KernelLibrary.layer_norm(lib, rows, w, b, 1e-12), _ln64(rows, w, b, 1e-12), rtol=3e-6, atol=2e-5
    )


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("t", [1, 2, 31, 33])
def test_neon_bias_gelu_matmul(harnesses, isa_name, t):
    """The BERT FFN's down product with its bias + exact-GELU prologue, against the numpy twin."""
    from embedpipe.codegen import fused
    from embedpipe.codegen.encoder_fused import combine_reference
    from tests.codegen.test_fused import _assert_product_close

    rng = np.random.default_rng(t + 1)
    k, n = 96 + 32 * (t % 2), 80
    codes = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
    y = (rng.standard_normal((t, k)) * 4).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    out = aligned_empty((t, n), np.float32, 64)
    out[...] = np.nan
    lib = qemu_library(harnesses.library(isa_name), lambda: [y, bias, out, *weight.packed])
    weight = KernelLibrary.prepare_int8(lib, codes, scale)  # read by the lambda when a fork runs
    fused.bias_gelu_matmul(weight, y, bias, out=out)
    _assert_product_close(out, combine_reference(y, bias, True), codes.astype(np.float32) * scale[:, None])


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("t", "d"), [(1, 32), (33, 384), (31, 40)])
def test_neon_residual_norm_and_combine(harnesses, isa_name, t, d):
    """The encoder's standalone LayerNorm (with the extension by selected blocks' residuals)
    and its bias (+ exact GELU) epilogue."""
    from embedpipe.codegen import encoder_fused as EF
    from tests.codegen.test_encoder_fused import gelu64, layer_norm64, operands, selections

    isa, exe = ISAS[isa_name], harnesses(EF.ENCODER_MODULE, isa_name)
    x, bias, res, w, beta = operands(t, d, t * 1000 + d)
    want = layer_norm64(x.astype(np.float64) + bias + res, w, beta, 1e-12)
    for extend in selections(d, t + d):
        known = [x, bias, res, w, beta, getattr(extend, "array", None)]
        native = QemuNative(EF.RESIDUAL_NORM, isa, exe, lambda known=known: known)
        out, ext = EF.RESIDUAL_NORM.drive(native, x, bias, res, w, beta, 1e-12, extend, threads=2)
        assert np.abs(out - want).max() <= 2e-5 * (1 + np.abs(want).max())
        if extend is not None and extend.blocks:
            assert np.array_equal(ext[:, :d], out)
            hi_lo = EF.extend_reference(out, extend)  # the residuals of the very rows it normalized
            assert np.mean(np.isclose(ext[:, d:], hi_lo[:, d:], rtol=1e-4, atol=1e-6 * np.abs(out).max())) > 0.99
    y = (np.random.default_rng(t).standard_normal((t, d)) * 3).astype(np.float32)
    for gelu in (False, True):
        native = QemuNative(EF.COMBINE, isa, exe, lambda: [y, bias])
        got = EF.COMBINE.drive(native, y, bias, gelu, threads=2)
        s = y.astype(np.float64) + bias
        assert np.abs(got - (gelu64(s) if gelu else s)).max() <= 2e-6 * (1 + np.abs(s).max())


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8])
def test_neon_rowdot_and_topk(harnesses, isa_name, dtype):
    """Brute-force search's kernels: row dot products of fp32/int16/int8 codes, then top-k."""
    from embedpipe.codegen import rowdot as R
    from embedpipe.codegen import topk as T

    rng = np.random.default_rng(9)
    n, d = 1000, 67
    X = (rng.standard_normal((n, d)) * (1 if dtype == np.float32 else 40)).astype(dtype)
    q = rng.standard_normal(d).astype(np.float32)
    kernel, isa = R.ROWDOT[np.dtype(dtype)], ISAS[isa_name]
    got = kernel.drive(QemuNative(kernel, isa, harnesses(R.ROWDOT_MODULE, isa_name), lambda: [X, q]), X, q)
    want = X.astype(np.float64) @ q
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    scores = rng.standard_normal((5, n)).astype(np.float32)
    native = QemuNative(T.TOPK, isa, harnesses(T.TOPK_MODULE, isa_name), lambda: [scores])
    for k in (1, 10, 999):
        got_s, got_i = T.TOPK.drive(native, scores, k)
        want_s, want_i = T.topk_reference(scores, k)
        np.testing.assert_array_equal(got_s, want_s)
        np.testing.assert_array_equal(got_i, want_i)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_pairdot(harnesses, isa_name):
    """The Annoy builder's level margins: row-pair dots over the pool (rows and normals by index)."""
    from embedpipe.codegen import pairdot as P

    rng = np.random.default_rng(11)
    X, Q = rng.standard_normal((300, 67)).astype(np.float32), rng.standard_normal((5, 67)).astype(np.float32)
    rows, qrows = rng.integers(0, 300, P.PARALLEL_MIN_PAIRS + 5), rng.integers(0, 5, P.PARALLEL_MIN_PAIRS + 5)
    native = QemuNative(P.PAIRDOT, ISAS[isa_name], harnesses(P.PAIRDOT_MODULE, isa_name), lambda: [X, rows, Q, qrows])
    got = P.PAIRDOT.drive(native, X, rows, Q, qrows)
    want = np.einsum("ij,ij->i", X[rows].astype(np.float64), Q[qrows].astype(np.float64))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_two_means(harnesses, isa_name):
    """The Annoy builder's splits: 2-means over each node's sample rows, nodes over the pool."""
    from embedpipe.codegen import twomeans as M

    rng = np.random.default_rng(12)
    X = rng.standard_normal((400, 67)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sizes = [256, 1, 0, 40, 99]
    sample = np.concatenate([rng.choice(400, s, replace=False) for s in sizes]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    start = np.stack([X[rng.choice(400, 2, replace=False)] for _ in sizes])
    cent, sums = start.copy(), np.empty_like(start)
    native = QemuNative(
        M.TWO_MEANS, ISAS[isa_name], harnesses(M.TWO_MEANS_MODULE, isa_name), lambda: [X, sample, starts, cent, sums]
    )
    M.TWO_MEANS.drive(native, X, sample, starts, cent, 6, sums)
    want = M.two_means_reference(X, sample, starts, start.copy(), 6)
    np.testing.assert_allclose(cent, want, atol=2e-5)
