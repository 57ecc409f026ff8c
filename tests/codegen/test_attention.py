"""Banded softmax attention on the JIT kernels vs a float64 numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, get_kernel_library, runnable_isas

ISAS = [s.name for s in runnable_isas()]


def attention_ref(q, k, v, half_window):
    t, n_q, _ = q.shape
    group = n_q // k.shape[1]
    out = np.zeros((t, n_q, v.shape[2]))
    idx = np.arange(t)
    far = (np.abs(idx[:, None] - idx[None, :]) > half_window) if half_window is not None else np.zeros((t, t), bool)
    for h in range(n_q):
        s = q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T
        s[far] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h] = p @ v[:, h // group]
    return out.reshape(t, -1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "t,n_q,n_kv,d,hw",
    [
        (1, 3, 1, 256, None),
        (7, 3, 1, 32, 2),
        (40, 4, 2, 64, None),
        (90, 3, 1, 256, 16),
        (131, 2, 2, 40, 130),
        (33, 1, 1, 8, 0),
    ],
)
def test_attention_matches_reference(isa, t, n_q, n_kv, d, hw):
    rng = np.random.default_rng(t * 7 + d)
    q = (rng.standard_normal((t, n_q, d)) / np.sqrt(d) * 3).astype(np.float32)
    k = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    got = get_kernel_library(isa, 2).attention(q, k, v, hw)
    ref = attention_ref(q, k, v, hw)
    assert got.shape == (t, n_q * d) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 3e-6 * np.abs(ref).max()


def test_window_zero_is_identity_on_values():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((9, 1, 4)).astype(np.float32)
    q = rng.standard_normal((9, 2, 4)).astype(np.float32)
    got = get_kernel_library(ISAS[0], 1).attention(q, q[:, :1].copy(), v, 0)
    np.testing.assert_array_equal(got.reshape(9, 2, 4), np.repeat(v, 2, axis=1))


def test_attention_validates():
    lib = get_kernel_library(ISAS[0], 1)
    q = np.zeros((4, 3, 8), np.float32)
    kv = np.zeros((4, 1, 8), np.float32)
    with pytest.raises(KernelInputError, match="float32"):
        lib.attention(q.astype(np.float64), kv, kv)
    with pytest.raises(KernelInputError, match="shapes do not fit"):
        lib.attention(q, np.zeros((5, 1, 8), np.float32), kv)
    with pytest.raises(KernelInputError, match="cannot share"):
        lib.attention(q, np.zeros((4, 2, 8), np.float32), np.zeros((4, 2, 8), np.float32))
