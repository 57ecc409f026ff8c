"""Spherical 2-means over row samples: the two centroids of each of many small point sets.

A random-projection tree splits a node along the line between two centroids of a sample of
its rows (Annoy's idea). A forest has thousands of such nodes, each a few hundred rows, so the
per-node numpy version pays its calls and temporaries thousands of times and runs on one core.
Here one call takes a whole level of nodes: node ``t`` owns the sample rows
``X[sample[starts[t]:starts[t+1]]]`` and the unit centroids ``cent[t, 0]`` and ``cent[t, 1]``
(its starting points on entry, its result on return: the kernel works in place). Each of ``iters`` Lloyd steps scores every
sample row against both centroids, adds the row to the sum of the nearer one (ties go to the
first, as ``argmax`` does), then sets each centroid that won a row to its normalized sum and
re-normalizes the other. A row is read once per step, where it lies, with no gathered copy.
Sample rows and node bounds are checked in Python before the call; numpy is the twin.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I64,
    PTR,
    const_i64,
    elem_ptr,
    for_range,
    intrinsic,
    load_elem,
    splat,
    sweep,
    var,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.rowdot import dot_rows
from embedpipe.codegen.threads import default_threads, split_range


def _emit_scaled_copy(b: ir.IRBuilder, lanes: int, src: ir.Value, dst: ir.Value, d: ir.Value, norm: ir.Value) -> None:
    """``dst = src / norm``, elementwise (division, as numpy normalizes)."""

    def body(ty: ir.Type, j: ir.Value) -> None:
        v = b.load(elem_ptr(b, F32, src, j), typ=ty, align=4)
        b.store(b.fdiv(v, splat(b, norm, ty.count)), elem_ptr(b, F32, dst, j), align=4)

    sweep(b, const_i64(0), d, lanes, body, "norm")


def _emit_normalize(b: ir.IRBuilder, lanes: int, src: ir.Value, dst: ir.Value, d: ir.Value) -> None:
    """``dst = src / |src|``; an all-zero ``src`` leaves ``dst`` all zero (as ``normalize_rows``)."""
    (sq,) = dot_rows(b, [src], src, d, F32, lanes, unroll=2)
    norm = b.call(intrinsic(b.module, "llvm.sqrt.f32", F32, [F32]), [sq])
    zero = b.fcmp_ordered("==", norm, ir.Constant(F32, 0.0))
    safe = b.select(zero, ir.Constant(F32, 1.0), norm)
    _emit_scaled_copy(b, lanes, src, dst, d, safe)


def _emit_add_row(b: ir.IRBuilder, lanes: int, acc: ir.Value, row: ir.Value, d: ir.Value) -> None:
    def body(ty: ir.Type, j: ir.Value) -> None:
        ptr = elem_ptr(b, F32, acc, j)
        v = b.load(elem_ptr(b, F32, row, j), typ=ty, align=4)
        b.store(b.fadd(b.load(ptr, typ=ty, align=4), v), ptr, align=4)

    sweep(b, const_i64(0), d, lanes, body, "add")


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    X, d, sample, starts, lo, hi, iters, cent, sums = b.function.args
    lanes = isa.lanes
    zero64 = const_i64(0)
    with for_range(b, lo, hi, 1, "node") as t:
        base = b.mul(t, b.mul(d, const_i64(2)))
        c = [elem_ptr(b, F32, cent, base), elem_ptr(b, F32, cent, b.add(base, d))]
        s = [elem_ptr(b, F32, sums, base), elem_ptr(b, F32, sums, b.add(base, d))]
        first, last = load_elem(b, I64, starts, t), load_elem(b, I64, starts, b.add(t, const_i64(1)))
        with for_range(b, zero64, iters, 1, "step"):
            counts = [var(b, I64, zero64), var(b, I64, zero64)]

            def clear(ty: ir.Type, j: ir.Value) -> None:
                for acc in s:
                    b.store(ir.Constant(ty, None), elem_ptr(b, F32, acc, j), align=4)

            sweep(b, zero64, d, lanes, clear, "clear")
            with for_range(b, first, last, 1, "pt") as p:
                row = elem_ptr(b, F32, X, b.mul(load_elem(b, I64, sample, p), d))
                a0, a1 = dot_rows(b, c, row, d, F32, lanes, unroll=2)
                second = b.fcmp_ordered(">", a1, a0)
                _emit_add_row(b, lanes, b.select(second, s[1], s[0]), row, d)
                for side, cnt in enumerate(counts):
                    won = second if side else b.not_(second)
                    b.store(b.add(b.load(cnt), b.zext(won, I64)), cnt)
            for side in range(2):
                src = b.select(b.icmp_signed(">", b.load(counts[side]), zero64), s[side], c[side])
                _emit_normalize(b, lanes, src, c[side], d)
    b.ret_void()


def _checked(
    X: np.ndarray, sample: np.ndarray, starts: np.ndarray, cent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if X.dtype != np.float32 or X.ndim != 2:
        raise ValueError(f"two_means: X must be a float32 matrix, got {X.dtype} {X.shape}")
    sample = np.ascontiguousarray(sample, dtype=np.int64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    nodes = len(starts) - 1
    if sample.ndim != 1 or starts.ndim != 1 or nodes < 0:
        raise ValueError("two_means: sample and starts must be 1-d, starts with one more entry than nodes")
    if len(sample) and (int(sample.min()) < 0 or int(sample.max()) >= X.shape[0]):
        raise ValueError(f"two_means: sample rows must lie in [0, {X.shape[0]}), got [{sample.min()}, {sample.max()}]")
    if nodes and (starts[0] != 0 or starts[-1] != len(sample) or np.any(np.diff(starts) < 0)):
        raise ValueError("two_means: starts must rise from 0 to the sample's length")
    if cent.shape != (nodes, 2, X.shape[1]) or cent.dtype != np.float32 or not cent.flags.c_contiguous:
        raise ValueError(
            f"two_means: centroids must be C-contiguous float32 of shape {(nodes, 2, X.shape[1])}, got {cent.shape}"
        )
    return np.ascontiguousarray(X), sample, starts, cent


def _drive(
    native: Native,
    X: np.ndarray,
    sample: np.ndarray,
    starts: np.ndarray,
    cent: np.ndarray,
    iters: int,
    sums: np.ndarray | None = None,
) -> np.ndarray:
    X, sample, starts, cent = _checked(X, sample, starts, cent)
    nodes, d = len(starts) - 1, X.shape[1]
    if nodes == 0 or iters <= 0:
        return cent
    if sums is None:
        sums = np.empty_like(cent)
    elif sums.shape != cent.shape or sums.dtype != np.float32 or not sums.flags.c_contiguous:
        raise ValueError(f"two_means: sums must be C-contiguous float32 of shape {cent.shape}")
    common = (X.ctypes.data, d, sample.ctypes.data, starts.ctypes.data)
    parts = min(default_threads(), nodes)
    native.run(
        [(*common, lo, hi, iters, cent.ctypes.data, sums.ctypes.data) for lo, hi in split_range(0, nodes, parts)]
    )
    return cent


def two_means_reference(
    X: np.ndarray, sample: np.ndarray, starts: np.ndarray, cent: np.ndarray, iters: int
) -> np.ndarray:
    """numpy twin: the same Lloyd steps, one node at a time."""
    X, sample, starts, cent = _checked(X, sample, starts, cent)
    sides = np.arange(2)[:, None]
    for t in range(len(starts) - 1):
        pts = X[sample[starts[t] : starts[t + 1]]]
        c = cent[t]
        for _ in range(iters):
            member = ((pts @ c.T).argmax(axis=1) == sides).astype(np.float32)  # (2, points)
            sums = member @ pts
            kept = member.any(axis=1)
            c[kept] = sums[kept]
            norms = np.sqrt(np.add.reduce(c * c, axis=1, keepdims=True))
            c /= np.where(norms == 0, np.float32(1), norms)
    return cent


_PARAMS = [
    ("X", PTR),
    ("d", I64),
    ("sample", PTR),
    ("starts", PTR),
    ("lo", I64),
    ("hi", I64),
    ("iters", I64),
    ("cent", PTR),
    ("sums", PTR),
]
TWO_MEANS = Kernel("twomeans_float32", _PARAMS, _emit, twin=two_means_reference, drive=_drive)
TWO_MEANS_MODULE = KernelModule("ep_twomeans", [TWO_MEANS])


def two_means(X: np.ndarray, sample: np.ndarray, starts: np.ndarray, cent: np.ndarray, iters: int) -> np.ndarray:
    """Centroids ``(nodes, 2, d)`` after ``iters`` spherical 2-means steps from ``cent`` over
    each node's sample rows of ``X`` (a new array); indices and bounds are checked first."""
    return TWO_MEANS(X, sample, starts, np.array(cent, np.float32, order="C"), iters)
