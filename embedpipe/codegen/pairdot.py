"""Dots of row pairs: ``out[i] = X[rows[i]] · Q[qrows[i]]`` for fp32 X and Q.

A random-projection tree build splits every open node of a level at once: each item's margin
is its vector against its node's hyperplane normal. Gathering the rows first (``X[rows]`` and
``Q[qrows]``, then a row-wise dot) copies the whole data set twice per level; this kernel reads
each row where it lies. The row and normal indices are checked in Python before the call, so
the kernel only follows indices inside both arrays. numpy (gather + ``einsum``) is the twin.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import F32, I64, PTR, const_i64, elem_ptr, for_range, load_elem, store_elem
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.rowdot import dot_rows
from embedpipe.codegen.threads import default_threads, split_range

PARALLEL_MIN_PAIRS = 4096


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    X, rows, Q, qrows, m, d, out = b.function.args
    with for_range(b, const_i64(0), m, 1, "pair") as i:
        x = elem_ptr(b, F32, X, b.mul(load_elem(b, I64, rows, i), d))
        q = elem_ptr(b, F32, Q, b.mul(load_elem(b, I64, qrows, i), d))
        (s,) = dot_rows(b, [x], q, d, F32, isa.lanes, unroll=4)
        store_elem(b, F32, out, i, s)
    b.ret_void()


def pairdot_reference(X: np.ndarray, rows: np.ndarray, Q: np.ndarray, qrows: np.ndarray) -> np.ndarray:
    """numpy twin: the gathers and a row-wise dot, fp32."""
    return np.einsum("ij,ij->i", X[rows], Q[qrows]).astype(np.float32, copy=False)


def _checked(
    X: np.ndarray, rows: np.ndarray, Q: np.ndarray, qrows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if X.dtype != np.float32 or Q.dtype != np.float32 or X.ndim != 2 or Q.ndim != 2 or X.shape[1] != Q.shape[1]:
        raise ValueError(f"pairdot: X and Q must be float32 matrices of one width, got {X.shape} and {Q.shape}")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    qrows = np.ascontiguousarray(qrows, dtype=np.int64)
    if rows.ndim != 1 or rows.shape != qrows.shape:
        raise ValueError(f"pairdot: rows and qrows must be 1-d of one length, got {rows.shape} and {qrows.shape}")
    for name, idx, limit in (("rows", rows, X.shape[0]), ("qrows", qrows, Q.shape[0])):
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= limit):
            raise ValueError(f"pairdot: {name} must lie in [0, {limit}), got [{idx.min()}, {idx.max()}]")
    return np.ascontiguousarray(X), rows, np.ascontiguousarray(Q), qrows


def _drive(native: Native, X: np.ndarray, rows: np.ndarray, Q: np.ndarray, qrows: np.ndarray) -> np.ndarray:
    X, rows, Q, qrows = _checked(X, rows, Q, qrows)
    m, d = len(rows), X.shape[1]
    out = np.empty(m, np.float32)
    if m == 0:
        return out
    parts = default_threads() if m >= PARALLEL_MIN_PAIRS else 1
    native.run(
        [
            (
                X.ctypes.data,
                rows.ctypes.data + 8 * lo,
                Q.ctypes.data,
                qrows.ctypes.data + 8 * lo,
                hi - lo,
                d,
                out.ctypes.data + 4 * lo,
            )
            for lo, hi in split_range(0, m, parts)
        ]
    )
    return out


def _twin(X: np.ndarray, rows: np.ndarray, Q: np.ndarray, qrows: np.ndarray) -> np.ndarray:
    return pairdot_reference(*_checked(X, rows, Q, qrows))


_PARAMS = [("X", PTR), ("rows", PTR), ("Q", PTR), ("qrows", PTR), ("m", I64), ("d", I64), ("out", PTR)]
PAIRDOT = Kernel("pairdot_float32", _PARAMS, _emit, twin=_twin, drive=_drive)
PAIRDOT_MODULE = KernelModule("ep_pairdot", [PAIRDOT])


def pairdot(X: np.ndarray, rows: np.ndarray, Q: np.ndarray, qrows: np.ndarray) -> np.ndarray:
    """``X[rows[i]] · Q[qrows[i]]`` for every i, float32; indices are checked first."""
    return PAIRDOT(X, rows, Q, qrows)
