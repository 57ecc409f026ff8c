"""Fused row kernels (``codegen.fused``) against their numpy twins on every runnable ISA, at
ragged token counts, plus the row-independence that batch-invariant vectors rest on."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, fused, get_kernel_library, ir_q8, ir_quantize, runnable_isas

ISAS = [s.name for s in runnable_isas()]
ROWS = [1, 2, 31, 33, 257, 600, 2048]


def _int_weight(lib, rng, n: int, k: int):
    codes = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
    return lib.prepare_int8(codes, scale), codes.astype(np.float32) * scale[:, None]


def _q8_product(h: np.ndarray, w_f32: np.ndarray) -> np.ndarray:
    """The int8 product's exact value for activations quantized like the kernel."""
    q, d = ir_quantize.quantize_reference(h)
    xq = (q.reshape(h.shape[0], -1, ir_q8.QK) * d[:, :, None]).reshape(h.shape)
    return (xq.astype(np.float64) @ w_f32.T.astype(np.float64)).astype(np.float32)


def _assert_product_close(got: np.ndarray, h_ref: np.ndarray, w_f32: np.ndarray) -> None:
    """The prologue may differ from numpy by an ulp, which can move an activation to the
    neighbouring int8 level: allow that, not more."""
    want = _q8_product(h_ref, w_f32)
    scale = np.abs(h_ref).max(axis=1, keepdims=True) / 127 * np.abs(w_f32).sum(axis=1)[None, :]
    assert got.shape == want.shape and got.dtype == np.float32
    assert (np.abs(got - want) <= 1e-5 * np.abs(want) + 0.02 * scale + 1e-6).all()
    assert np.abs(got - want).mean() <= 1e-4 * np.abs(want).mean() + 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("residual", [True, False])
def test_norm_matmul(isa, t, residual):
    rng = np.random.default_rng(t + 7 * residual)
    lib = get_kernel_library(isa, 2)
    k, n = 96, 80 + (t % 3) * 16  # ragged N against the panel width
    w, wf = _int_weight(lib, rng, n, k)
    x = (rng.standard_normal((t, k)) * 300).astype(np.float32)
    y = rng.standard_normal((t, k)).astype(np.float32) if residual else None
    w_post = (rng.random(k) + 0.5).astype(np.float32)
    w_pre = (rng.random(k) + 0.5).astype(np.float32)
    x_new, out = fused.norm_matmul(w, x, y, w_post if residual else None, w_pre, 1e-6)
    want_x = x + fused.rms_norm_reference(y, w_post, 1e-6) if residual else x
    np.testing.assert_allclose(x_new, want_x, rtol=1e-6, atol=1e-6 * 300)
    _assert_product_close(out, fused.rms_norm_reference(want_x, w_pre, 1e-6), wf)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
def test_gelu_matmul(isa, t):
    rng = np.random.default_rng(t)
    lib = get_kernel_library(isa, 2)
    k, n = 64, 48
    w, wf = _int_weight(lib, rng, n, k)
    gu = (rng.standard_normal((t, 2 * k)) * 4).astype(np.float32)
    out = fused.gelu_matmul(w, gu)
    _assert_product_close(out, fused.gelu_tanh_mul_reference(gu[:, :k], gu[:, k:]), wf)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
def test_bias_gelu_matmul(isa, t):
    """Against the numpy twin of GELU-erf, and bit-identical to the two-kernel path it replaces
    (the combine kernel, then the product)."""
    from embedpipe.codegen.encoder_fused import COMBINE, combine_reference

    rng = np.random.default_rng(t + 1)
    lib = get_kernel_library(isa, 2)
    k, n = 96 + 32 * (t % 2), 80  # K of 3 or 4 blocks: a ragged tail of the 2-lane-vector sweep
    w, wf = _int_weight(lib, rng, n, k)
    y = (rng.standard_normal((t, k)) * 4).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    out = fused.bias_gelu_matmul(w, y, bias)
    _assert_product_close(out, combine_reference(y, bias, True), wf)
    assert np.array_equal(out, w(COMBINE.on(lib.isa)(y, bias, True, threads=2)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("heads", [(3, 1, 256, 256), (2, 2, 10, 6), (4, 2, 34, 34)])
def test_qk_norm_rope(isa, t, heads):
    n_q, n_kv, d, dv = heads
    rng = np.random.default_rng(t + d)
    lib = get_kernel_library(isa, 2)
    qkv = (rng.standard_normal((t, (n_q + n_kv) * d + n_kv * dv)) * 20).astype(np.float32)
    qw, kw = (rng.random(d).astype(np.float32) for _ in range(2))
    angles = (rng.random((t, d // 2)) * 50).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    got = fused.qk_norm_rope(lib, qkv, qw, kw, cos, sin, n_q, n_kv, d, dv, 1e-6)
    want = fused.qk_norm_rope_reference(qkv, qw, kw, cos, sin, n_q, n_kv, d, dv, 1e-6)
    for g, ww in zip(got, want):
        assert g.shape == ww.shape
        np.testing.assert_allclose(g, ww, rtol=2e-6, atol=2e-6)
    assert np.array_equal(got[2], want[2])  # V is copied


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
def test_add_norm(isa, t):
    rng = np.random.default_rng(t)
    lib = get_kernel_library(isa, 2)
    d = 70
    x = (rng.standard_normal((t, d)) * 1e3).astype(np.float32)
    y = rng.standard_normal((t, d)).astype(np.float32)
    w_post, w = (rng.random(d).astype(np.float32) + 0.5 for _ in range(2))
    got = fused.add_norm(lib, x, y, w_post, w, 1e-6)
    np.testing.assert_allclose(got, fused.add_norm_reference(x, y, w_post, w, 1e-6), rtol=3e-6, atol=3e-6)


@pytest.mark.parametrize("t", [1, 5, 16])
def test_small_row_ops_split_over_the_threads_only_inside_a_recording(t):
    """A few rows of qk_norm_rope / add_norm run whole on the calling thread when called
    eagerly; a recorded program's step costs its barrier anyway, so there every thread gets
    rows (each row computed exactly as before)."""
    from embedpipe.codegen.recorder import recording

    rng = np.random.default_rng(t)
    lib = get_kernel_library(ISAS[0], 2)
    n_q, n_kv, d, dv = 3, 1, 16, 16
    qkv = rng.standard_normal((t, (n_q + n_kv) * d + n_kv * dv)).astype(np.float32)
    qw, kw = (rng.random(d).astype(np.float32) for _ in range(2))
    cos, sin = (rng.random((t, d // 2)).astype(np.float32) for _ in range(2))
    x, y = (rng.standard_normal((t, 64)).astype(np.float32) for _ in range(2))
    w = rng.random(64).astype(np.float32)
    with recording() as rec:
        fused.qk_norm_rope(lib, qkv, qw, kw, cos, sin, n_q, n_kv, d, dv, 1e-6)
        fused.add_norm(lib, x, y, w, w, 1e-6)
    assert [len(words) for _, words, _ in rec.steps] == [min(t, 2)] * 2
    assert fused._row_parts(lib, qkv.size) == 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_is_computed_the_same_in_any_batch(isa, threads):
    """Bit-identical rows whatever the row count, the row's tile position and the thread split."""
    rng = np.random.default_rng(3)
    lib = get_kernel_library(isa, threads)
    k, n = 128, 144
    w, _ = _int_weight(lib, rng, n, k)
    rows = (rng.standard_normal((600, 2 * k)) * 30).astype(np.float32)
    x, y, gu = rows[:, :k].copy(), rows[:, k:].copy(), rows * 0.1
    w_post, w_pre = (rng.random(k).astype(np.float32) + 0.5 for _ in range(2))
    picked = (0, 5, 6)
    alone = {i: fused.norm_matmul(w, x[i : i + 1], y[i : i + 1], w_post, w_pre, 1e-6) for i in picked}
    gelu_alone = {i: fused.gelu_matmul(w, gu[i : i + 1]) for i in picked}
    for t in (7, 33, 600):
        x_new, out = fused.norm_matmul(w, x[:t], y[:t], w_post, w_pre, 1e-6)
        gelu = fused.gelu_matmul(w, gu[:t])
        for i in picked:
            assert np.array_equal(x_new[i], alone[i][0][0]) and np.array_equal(out[i], alone[i][1][0]), (t, i)
            assert np.array_equal(gelu[i], gelu_alone[i][0]), (t, i)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("blocks", [None, (2,), (0, 3)])
def test_residual_norm_matmul(isa, t, blocks):
    """Bit-identical to the two-kernel path it replaces (the residual_norm kernel into fp32
    rows, extended or not, then the product), and close to the numpy twin."""
    from embedpipe.codegen.encoder_fused import RESIDUAL_NORM, ExtendBlocks, residual_norm_reference

    rng = np.random.default_rng(t + 3 * len(blocks or ()))
    lib = get_kernel_library(isa, 2)
    d = 128 + 32 * (t % 2)  # 4 or 5 blocks: a ragged tail of the 2-lane-vector sweep
    extend = ExtendBlocks(d, blocks) if blocks is not None else None
    k = d if extend is None else extend.ext_width
    w, wf = _int_weight(lib, rng, 80 + 16 * (t % 3), k)
    x = (rng.standard_normal((t, d)) * 3).astype(np.float32)
    x[:, 5] *= 40  # an outlier feature, as LayerNorm inputs have
    res = rng.standard_normal((t, d)).astype(np.float32)
    bias, weight, beta = (rng.standard_normal(d).astype(np.float32) for _ in range(3))
    h, out = fused.residual_norm_matmul(w, x, bias, res, weight, beta, 1e-12, extend)
    rows, ext = RESIDUAL_NORM.on(lib.isa)(x, bias, res, weight, beta, 1e-12, extend, threads=2)
    np.testing.assert_array_equal(h, rows)
    np.testing.assert_array_equal(out, w(rows if ext is None else ext))
    want_rows, want_ext = residual_norm_reference(x, bias, res, weight, beta, 1e-12, extend)
    np.testing.assert_allclose(h, want_rows, rtol=1e-5, atol=1e-5)
    _assert_product_close(out, want_rows if want_ext is None else want_ext, wf)


def test_residual_norm_matmul_inputs_are_validated():
    from embedpipe.codegen.encoder_fused import ExtendBlocks

    lib = get_kernel_library(ISAS[0], 1)
    w, _ = _int_weight(lib, np.random.default_rng(0), 32, 64)
    x, ones = np.ones((3, 64), np.float32), np.ones(64, np.float32)
    with pytest.raises(KernelInputError, match="do not fit"):
        fused.residual_norm_matmul(w, x, ones, np.ones((2, 64), np.float32), ones, ones, 1e-6, None)
    with pytest.raises(KernelInputError, match="does not take extended rows"):
        fused.residual_norm_matmul(w, x, ones, x.copy(), ones, ones, 1e-6, ExtendBlocks(64, [1]))
    with pytest.raises(KernelInputError, match="need ExtendBlocks"):
        fused.residual_norm_matmul(w, x, ones, x.copy(), ones, ones, 1e-6, [1])
    with pytest.raises(KernelInputError, match="overlap"):
        fused.residual_norm_matmul(w, x, ones, x.copy(), ones, ones, 1e-6, None, x_out=x)
    with pytest.raises(KernelInputError, match="float32"):
        fused.residual_norm_matmul(w, x, ones.astype(np.float64), x.copy(), ones, ones, 1e-6, None)


def test_fused_inputs_are_validated():
    lib = get_kernel_library(ISAS[0], 1)
    rng = np.random.default_rng(0)
    w, _ = _int_weight(lib, rng, 32, 64)
    x = np.ones((3, 64), np.float32)
    ones = np.ones(64, np.float32)
    with pytest.raises(KernelInputError, match="do not fit"):
        fused.norm_matmul(w, np.ones((3, 32), np.float32), None, None, ones[:32], 1e-6)
    with pytest.raises(KernelInputError, match="float32"):
        fused.norm_matmul(w, x.astype(np.float64), None, None, ones, 1e-6)
    with pytest.raises(KernelInputError, match="do not fit"):
        fused.norm_matmul(w, x, np.ones((2, 64), np.float32), ones, ones, 1e-6)
    with pytest.raises(KernelInputError, match=r"\(T, 128\)"):
        fused.gelu_matmul(w, np.ones((3, 64), np.float32))
    with pytest.raises(KernelInputError, match="do not fit"):
        fused.bias_gelu_matmul(w, x, ones[:32])
    with pytest.raises(KernelInputError, match="float32"):
        fused.bias_gelu_matmul(w, x, ones.astype(np.float64))
    with pytest.raises(KernelInputError, match="C-contiguous"):
        fused.add_norm(lib, x[:, ::2], x[:, ::2], ones[:32], ones[:32], 1e-6)
    with pytest.raises(KernelInputError, match="does not hold"):
        tables = np.ones((3, 8), np.float32)
        fused.qk_norm_rope(lib, x, ones[:16], ones[:16], tables, tables, 1, 1, 16, 16, 1e-6)


def _force_panels(monkeypatch) -> None:
    """Every product goes to the pool (short ones too), split by panels below 128 rows per thread."""
    from embedpipe.codegen import prepared

    monkeypatch.setattr(prepared, "MIN_PARALLEL_MACS", 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", [1, 2, 31, 33])
def test_panel_split_prepares_rows_once_and_matches_one_thread(isa, t, monkeypatch):
    """A panel split prepares the activations once, rows spread over the threads (one fork
    whose items multiply nothing), then multiplies every row by each thread's panels (a second
    fork whose items prepare nothing): bit-identical to one thread, for every work kernel."""
    from embedpipe.codegen.ir_fused import ADDNORM_PARAMS
    from embedpipe.codegen.recorder import recording

    _force_panels(monkeypatch)
    rng = np.random.default_rng(100 + t)
    k, n = 96 + 32 * (t % 2), 1200 + 16 * (t % 3)  # many panels, ragged N and K tails
    codes = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
    x = (rng.standard_normal((t, k)) * 300).astype(np.float32)
    y = rng.standard_normal((t, k)).astype(np.float32)
    gu = (rng.standard_normal((t, 2 * k)) * 4).astype(np.float32)
    w_post, w_pre, bias = (rng.random(k).astype(np.float32) + 0.5 for _ in range(3))

    def products(lib):
        w = lib.prepare_int8(codes, scale)
        x_new, normed = fused.norm_matmul(w, x, y, w_post, w_pre, 1e-6)
        _, plain_norm = fused.norm_matmul(w, x, None, None, w_pre, 1e-6)
        return w, {
            "x_new": x_new,
            "norm": normed,
            "plain_norm": plain_norm,
            "gelu": fused.gelu_matmul(w, gu),
            "bias_gelu": fused.bias_gelu_matmul(w, y, bias),
            "residual_norm": fused.residual_norm_matmul(w, y, bias, x, w_post, w_pre, 1e-6, None)[1],
            "matmul": w(x),
        }

    _, one = products(get_kernel_library(isa, 1))
    for threads in (2, 3):
        lib = get_kernel_library(isa, threads)
        w, got = products(lib)
        mr = lib.int_tile.mr
        tpad = -(-t // mr) * mr
        assert w._plan(t, mr, w.packed[0].shape[0], lib.isa.lanes * lib.int_tile.nv)[0] == "panels"
        for name, want in one.items():
            np.testing.assert_array_equal(got[name], want, err_msg=f"{name}, {threads} threads")
        with recording() as rec:
            fused.norm_matmul(w, x, y, w_post, w_pre, 1e-6)
        assert rec.ops == 1 and len(rec.steps) == 2
        (_, prep, _), (_, mult, _) = rec.steps
        words = [name for name, _ in ADDNORM_PARAMS]
        qa, qb, a, b, p0, p1, write = (words.index(name) for name in ("qa", "qb", "a", "b", "p0", "p1", "write_x"))
        # first fork: rows [0, tpad) once, in order, each by one item that multiplies nothing
        assert prep[0, qa] == 0 and prep[-1, qb] == tpad and (prep[1:, qa] == prep[:-1, qb]).all()
        assert (prep[:, a] == prep[:, b]).all() and (prep[:, p0] == prep[:, p1]).all()
        # second fork: no prologue, every row times each item's panels, all panels once
        assert (mult[:, qa] == mult[:, qb]).all() and (mult[:, a] == 0).all() and (mult[:, b] == tpad).all()
        assert mult[0, p0] == 0 and (mult[1:, p0] == mult[:-1, p1]).all() and mult[-1, p1] == w.packed[0].shape[0]
        assert (prep[:, write] == 1).all() and (mult[:, write] == 0).all()  # each row's owner stores x'
