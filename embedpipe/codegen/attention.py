"""Softmax attention of one sequence on the JIT kernels: S = Q·Kᵀ and O = P·V run on the fp32
FMA matmul kernel (K and Vᵀ packed on the fly), the banded softmax on its own row kernel.

Grouped-query heads share a key/value head: the ``group`` query heads of one KV head are
stacked into one (group·T, D) operand so each K and V is packed once.
"""

from __future__ import annotations

import numpy as np

from embedpipe.codegen.threads import split_range


def attention(lib, q: np.ndarray, k: np.ndarray, v: np.ndarray, half_window: int | None = None) -> np.ndarray:
    """softmax(q·kᵀ, keys with |i−j| > half_window masked)·v.

    q: (T, Hq, D) fp32, already scaled; k: (T, Hkv, D); v: (T, Hkv, Dv); Hq a multiple of
    Hkv.  Returns (T, Hq·Dv) fp32.
    """
    from embedpipe.codegen.library import KernelInputError

    for name, arr in (("q", q), ("k", k), ("v", v)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 3:
            raise KernelInputError(f"attention: {name} must be a 3-D float32 numpy array")
    t, n_q, d = q.shape
    if k.shape[0] != t or v.shape[0] != t or k.shape[2] != d or v.shape[1] != k.shape[1]:
        raise KernelInputError(f"attention: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    n_kv = k.shape[1]
    if n_kv == 0 or n_q % n_kv or t == 0:
        raise KernelInputError(f"attention: {n_q} query heads cannot share {n_kv} KV heads")
    group = n_q // n_kv
    dv = v.shape[2]
    out = np.empty((t, n_q, dv), np.float32)
    hw = -1 if half_window is None else int(half_window)
    for h in range(n_kv):
        qs = np.ascontiguousarray(q[:, h * group : (h + 1) * group, :].transpose(1, 0, 2)).reshape(group * t, d)
        scores = lib.matmul_f32(qs, np.ascontiguousarray(k[:, h, :]))
        rows = group * t
        parts = lib.threads if scores.size >= 65_536 else 1
        lib.fork("softmax", [(scores.ctypes.data, t, t, hw, a, b) for a, b in split_range(0, rows, parts)])
        heads = lib.matmul_f32(scores, np.ascontiguousarray(v[:, h, :].T))
        out[:, h * group : (h + 1) * group, :] = heads.reshape(group, t, dv).transpose(1, 0, 2)
    return out.reshape(t, n_q * dv)
