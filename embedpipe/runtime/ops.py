"""Element-wise and attention operations of the transformer, in fp32 numpy/numexpr.

The matmuls with weights belong to the backend; these are the rest of the forward pass.
"""

from __future__ import annotations

import math

import numexpr as ne
import numpy as np

_GELU_C = math.sqrt(2.0 / math.pi)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) · weight over the last axis, in fp32."""
    mean_sq = np.einsum("...i,...i->...", x, x, dtype=np.float32) / np.float32(x.shape[-1])
    inv = 1.0 / np.sqrt(mean_sq + np.float32(eps), dtype=np.float32)
    return (x * inv[..., None]) * weight


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) ⊙ up in one pass."""
    # Constants as float32 locals: numexpr promotes Python float literals to double.
    c, a, half, one = np.float32(_GELU_C), np.float32(0.044715), np.float32(0.5), np.float32(1.0)
    return ne.evaluate("half * gate * (one + tanh(c * (gate + a * gate * gate * gate))) * up")


class RopeTable:
    """cos/sin tables for NeoX-style rotary embeddings (rotate halves), grown on demand."""

    def __init__(self, head_dim: int, theta: float):
        self.half = head_dim // 2
        self.inv_freq = (1.0 / theta ** (np.arange(0, self.half, dtype=np.float64) * 2.0 / head_dim)).astype(np.float32)
        self._cos = np.empty((0, self.half), np.float32)
        self._sin = np.empty((0, self.half), np.float32)

    def tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        need = int(positions.max()) + 1 if positions.size else 0
        if need > len(self._cos):
            # fp32 angles, as the reference implementation computes them.
            angles = np.arange(need, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = np.cos(angles), np.sin(angles)
        return self._cos[positions], self._sin[positions]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i+half) of the last axis; x is (S, heads, head_dim), cos/sin (S, half)."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate((x1 * c - x2 * s, x2 * c + x1 * s), axis=-1)


def window_mask(length: int, half_window: int | None) -> np.ndarray | None:
    """Additive mask hiding keys farther than `half_window` positions (None: attend to all)."""
    if half_window is None or length <= half_window + 1:
        return None
    idx = np.arange(length)
    far = np.abs(idx[:, None] - idx[None, :]) > half_window
    return np.where(far, np.float32(-np.inf), np.float32(0.0))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Bidirectional softmax attention of one sequence.

    q: (T, Hq, D) already scaled; k, v: (T, Hkv, D). Query heads share KV heads in groups.
    Returns (T, Hq·D).
    """
    t, n_q, d = q.shape
    n_kv = k.shape[1]
    group = n_q // n_kv
    out = np.empty((n_q, t, v.shape[-1]), np.float32)
    for h_kv in range(n_kv):
        qs = q[:, h_kv * group:(h_kv + 1) * group, :].transpose(1, 0, 2).reshape(group * t, d)
        scores = (qs @ k[:, h_kv, :].T).reshape(group, t, t)
        if mask is not None:
            scores += mask
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[h_kv * group:(h_kv + 1) * group] = (scores.reshape(group * t, t) @ v[:, h_kv, :]).reshape(group, t, -1)
    return out.transpose(1, 0, 2).reshape(t, -1)
