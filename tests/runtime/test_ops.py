"""Attention paths of the forward pass agree with the one-sequence numpy reference."""

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


@pytest.mark.parametrize("half_window", [None, 3])
@pytest.mark.parametrize("n_q,n_kv", [(3, 1), (4, 2)])
def test_padded_attention_matches_per_sequence(half_window, n_q, n_kv):
    lengths = np.array([1, 5, 9, 12], dtype=np.int64)
    q, k, v = _packed(lengths, n_q, n_kv)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.full((q.shape[0], n_q * 16), np.nan, np.float32)
    ops.padded_attention(q, k, v, starts, lengths, half_window, out)
    for a, n in zip(starts, lengths):
        want = ops.attention(q[a : a + n], k[a : a + n], v[a : a + n], ops.window_mask(int(n), half_window))
        np.testing.assert_allclose(out[a : a + n], want, rtol=1e-5, atol=1e-6)


def test_length_buckets_cover_short_sequences_once():
    lengths = np.array([300, 4, 50, 7, 7, 191, 192, 20] * 20, dtype=np.int64)
    buckets = ops.length_buckets(lengths, bucket_tokens=256)
    seen = np.concatenate(buckets)
    assert sorted(seen.tolist()) == np.flatnonzero(lengths < ops.LONG_SEQUENCE).tolist()
    for b in buckets:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 256


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


@pytest.mark.parametrize("half_window", [None, 4])
def test_attention_entry_agrees_between_numpy_and_jit_ops(half_window):
    from embedpipe.codegen import get_kernel_library

    lengths = [1, 6, 13, 40]
    q, k, v = _packed(lengths)
    plan = _Plan(lengths)
    want = ops.NumpyOps(1).attention(q, k, v, plan, half_window)
    jit = ops.JitOps(get_kernel_library(threads=2))
    got = jit.attention(q, k, v, plan, half_window)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(jit.attention(q, k, v, plan, half_window), got)  # planned once, reused
    assert len(plan.cache) == 1
    for a, n in zip(plan.starts, plan.lengths):
        alone = ops.attention(q[a : a + n], k[a : a + n], v[a : a + n], ops.window_mask(int(n), half_window))
        np.testing.assert_allclose(want[a : a + n], alone, rtol=1e-5, atol=1e-6)
