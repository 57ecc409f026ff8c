"""Ops of the forward pass: RoPE, and the attention entry of both op sets against a float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime import ops


def _packed(lengths, n_q=3, n_kv=1, d=16, seed=0):
    rng = np.random.default_rng(seed)
    s = int(sum(lengths))
    q = rng.standard_normal((s, n_q, d)).astype(np.float32)
    k = rng.standard_normal((s, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((s, n_kv, d)).astype(np.float32)
    return q, k, v


def test_rope_matches_rotation_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    table = ops.RopeTable(8, 10_000.0)
    cos, sin = table.tables(np.arange(5))
    got = ops.apply_rope(x, cos, sin)
    x1, x2 = x[..., :4], x[..., 4:]
    c, s = cos[:, None], sin[:, None]
    np.testing.assert_allclose(got, np.concatenate((x1 * c - x2 * s, x2 * c + x1 * s), -1), rtol=1e-6)


class _Plan:
    def __init__(self, lengths):
        self.lengths = np.asarray(lengths, np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1]))
        self.cache: dict = {}


@pytest.mark.parametrize("tiles", [False, True], ids=["fp32", "tiles"])
@pytest.mark.parametrize("half_window", [None, 4])
def test_attention_entry_agrees_between_numpy_and_jit_ops(half_window, tiles, monkeypatch):
    """JitOps runs the kernel ``select_native`` picks: the fp32 one agrees with numpy to fp32
    rounding, the bf16 tile one (allowed, and where it runs) to bf16's; without ``bf16`` the
    tile units never run."""
    from embedpipe.codegen import get_kernel_library
    from embedpipe.codegen.attention import ATTENTION_TILES, select_native
    from embedpipe.codegen.matrix_units import TILE_UNITS_ENV

    lengths = [1, 6, 13, 40]
    q, k, v = _packed(lengths)
    plan = _Plan(lengths)
    want = ops.NumpyOps(1).attention(q, k, v, plan, half_window)
    lib = get_kernel_library(threads=2)
    assert select_native(lib.isa).kernel is not ATTENTION_TILES
    if not tiles:
        monkeypatch.setenv(TILE_UNITS_ENV, "off")
    elif select_native(lib.isa, bf16=True).kernel is not ATTENTION_TILES:
        pytest.skip("the bf16 tile kernel does not run here")
    jit = ops.JitOps(lib)
    got = jit.attention(q, k, v, plan, half_window, bf16=tiles)
    tol = {"rtol": 0, "atol": 3e-2 * np.abs(want).max()} if tiles else {"rtol": 1e-5, "atol": 2e-6}
    np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_array_equal(jit.attention(q, k, v, plan, half_window, bf16=tiles), got)  # planned once, reused
    assert len(plan.cache) == 1
    for a, n in zip(plan.starts, plan.lengths):
        alone = _one_sequence(q[a : a + n], k[a : a + n], v[a : a + n], half_window)
        np.testing.assert_allclose(want[a : a + n], alone, rtol=1e-5, atol=3e-6)


def _one_sequence(q, k, v, half_window):
    """float64 softmax attention of one sequence (3 query heads on 1 KV head)."""
    t = q.shape[0]
    idx = np.arange(t)
    scores = np.einsum("ihd,jd->hij", q.astype(np.float64), k[:, 0].astype(np.float64))
    if half_window is not None:
        scores[:, np.abs(idx[:, None] - idx[None, :]) > half_window] = -np.inf
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hij,jd->ihd", p, v[:, 0].astype(np.float64)).reshape(t, -1)
