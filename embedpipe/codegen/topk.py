"""Exact top-k per row of an fp32 score matrix: one pass, a sorted k-slot buffer per row.

For k ≪ n almost every score fails a single compare against the current k-th best, so this is
one streaming read of the matrix.  ``topk_reference`` (argpartition) is the numpy twin.
Results are sorted descending; rows with fewer than k scores are padded with -inf / -1.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    const_i64,
    elem_ptr,
    for_range,
    insert_sorted,
    load_elem,
    store_elem,
    var,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.threads import default_threads, split_range

PARALLEL_MIN_SCORES = 1 << 20
NEG_INF = float("-inf")


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """``topk(S, rows, n, k, out_s, out_i)``: each row's best k into its sorted buffer."""
    S, rows, n, k, out_s, out_i = b.function.args
    with for_range(b, const_i64(0), rows, 1, "row") as r:
        obase = b.mul(r, k)
        row_s, row_i = elem_ptr(b, F32, out_s, obase), elem_ptr(b, I32, out_i, obase)
        with for_range(b, const_i64(0), k, 1, "init") as j:
            store_elem(b, F32, row_s, j, ir.Constant(F32, NEG_INF))
            store_elem(b, I32, row_i, j, ir.Constant(I32, -1))
        worst = var(b, F32, ir.Constant(F32, NEG_INF))
        last = b.sub(k, const_i64(1))
        srow = elem_ptr(b, F32, S, b.mul(r, n))
        with for_range(b, const_i64(0), n, 1, "scan") as j:
            s = load_elem(b, F32, srow, j)
            with b.if_then(b.fcmp_ordered(">", s, b.load(worst))):
                insert_sorted(b, last, const_i64(0), s, row_s, [(I32, row_i, b.trunc(j, I32))])
                b.store(load_elem(b, F32, row_s, last), worst)
    b.ret_void()


def topk_reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin: argpartition, then a stable sort of the k kept (scores, int64 columns)."""
    q, n = scores.shape
    k_eff = min(k, n)
    if k_eff < n:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    out_s = np.full((q, k), -np.inf, np.float32)
    out_i = np.full((q, k), -1, np.int64)
    out_s[:, :k_eff] = np.take_along_axis(part_scores, order, axis=1)
    out_i[:, :k_eff] = np.take_along_axis(part, order, axis=1)
    return out_s, out_i


def _drive(native: Native, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.dtype != np.float32 or k < 1:
        return topk_reference(scores, k)
    scores = np.ascontiguousarray(scores)
    q, n = scores.shape
    out_s = np.empty((q, k), np.float32)
    out_i = np.empty((q, k), np.int32)
    if q:
        parts = default_threads() if q * n >= PARALLEL_MIN_SCORES else 1
        native.run(
            [
                (
                    scores.ctypes.data + 4 * lo * n,
                    hi - lo,
                    n,
                    k,
                    out_s.ctypes.data + 4 * lo * k,
                    out_i.ctypes.data + 4 * lo * k,
                )
                for lo, hi in split_range(0, q, parts)
            ]
        )
    return out_s, out_i.astype(np.int64)


TOPK = Kernel(
    "topk",
    [("S", PTR), ("rows", I64), ("n", I64), ("k", I64), ("out_s", PTR), ("out_i", PTR)],
    _emit,
    twin=topk_reference,
    drive=_drive,
)
TOPK_MODULE = KernelModule("ep_topk", [TOPK])


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row of a (q, n) score matrix: (scores, int64 columns), descending."""
    return TOPK(scores, k)
