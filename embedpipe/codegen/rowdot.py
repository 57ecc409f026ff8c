"""Row dots of stored vectors (fp32 / int16 / int8 codes) against one fp32 query.

``out[i] = Σ_j float(X[i, j]) · q[j]``: four rows at a time share each query vector load; the
codes are widened in registers (``sitofp``), so int8 rows are scanned from their 1-byte
storage without a float copy.  Vectors are ``IsaSpec.lanes`` wide; widths that are not a
multiple of it finish with a scalar tail.  ``dot_rows`` is also the scoring primitive of the
index traversal kernels (``emit_dot``).  BLAS wins for many queries at once, so this serves
single / few-query scans; numpy is the twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I8,
    I16,
    I64,
    PTR,
    const_i64,
    elem_ptr,
    fmuladd,
    for_range,
    intrinsic,
    load_elem,
    store_elem,
    var,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.threads import default_threads, split_range

ROW_BLOCK = 4  # rows sharing one query load
PARALLEL_MIN_ROWS = 4096


def _widen(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    if v.type == F32 or (isinstance(v.type, ir.VectorType) and v.type.element == F32):
        return v
    target = vec(F32, v.type.count) if isinstance(v.type, ir.VectorType) else F32
    return b.sitofp(v, target)


def dot_rows(
    b: ir.IRBuilder, rows: Sequence[ir.Value], q: ir.Value, d: ir.Value, elt: ir.Type, lanes: int, unroll: int = 1
) -> list[ir.Value]:
    """fp32 ``Σ_j float(row[j])·q[j]`` for each row pointer (elements of type ``elt``).

    ``unroll`` independent accumulators per row hide the FMA latency of a lone row; then one
    vector loop of ``lanes``, then scalars for the last ``d mod lanes`` elements.
    """
    m = b.module
    vt = vec(F32, lanes)
    accs = [[var(b, vt, ir.Constant(vt, None)) for _ in range(unroll)] for _ in rows]

    def fma_step(j: ir.Value, u: int) -> None:
        qv = b.load(elem_ptr(b, F32, q, j), typ=vt, align=4)
        for r, row in enumerate(rows):
            xv = _widen(b, b.load(elem_ptr(b, elt, row, j), typ=vec(elt, lanes), align=1))
            b.store(fmuladd(b, m, xv, qv, b.load(accs[r][u])), accs[r][u])

    done = const_i64(0)
    if unroll > 1:
        done = b.and_(d, const_i64(-lanes * unroll))
        with for_range(b, const_i64(0), done, lanes * unroll, "dotu") as j:
            for u in range(unroll):
                fma_step(b.add(j, const_i64(u * lanes)), u)
        for acc in accs:
            b.store(_pairwise(b, [b.load(a) for a in acc]), acc[0])
    vec_end = b.and_(d, const_i64(-lanes))
    with for_range(b, done, vec_end, lanes, "dotv") as j:
        fma_step(j, 0)
    red = intrinsic(m, f"llvm.vector.reduce.fadd.v{lanes}f32", F32, [F32, vt])
    sums = [var(b, F32, b.call(red, [ir.Constant(F32, 0.0), b.load(acc[0])], fastmath=("reassoc",))) for acc in accs]
    with for_range(b, vec_end, d, 1, "dott") as j:
        qj = load_elem(b, F32, q, j)
        for row, s in zip(rows, sums):
            b.store(b.fadd(b.load(s), b.fmul(_widen(b, load_elem(b, elt, row, j)), qj)), s)
    return [b.load(s) for s in sums]


def _pairwise(b: ir.IRBuilder, values: list[ir.Value]) -> ir.Value:
    while len(values) > 1:
        pairs = [b.fadd(x, y) for x, y in zip(values[::2], values[1::2])]
        values = pairs + values[len(pairs) * 2 :]
    return values[0]


def emit_dot(module: ir.Module, elt: ir.Type, lanes: int) -> ir.Function:
    """internal ``float dot(X, scale, d, q, row)``, always inlined: row ``row`` of X (elements
    ``elt``) times ``q``; integer rows are multiplied by ``scale[row]``."""
    name = f"ep_dot_{elt}"
    try:
        return module.get_global(name)
    except KeyError:
        pass
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, PTR, I64, PTR, I64]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    X, scale, d, q, row = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    (s,) = dot_rows(b, [elem_ptr(b, elt, X, b.mul(row, d))], q, d, elt, lanes, unroll=4)
    if elt != F32:
        s = b.fmul(s, load_elem(b, F32, scale, row))
    b.ret(s)
    return fn


def _emitter(elt: ir.Type):
    def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
        """Blocks of ``ROW_BLOCK`` rows while they last, then single rows."""
        X, n, d, q, out = b.function.args
        full = b.mul(b.sdiv(n, const_i64(ROW_BLOCK)), const_i64(ROW_BLOCK))
        for start, stop, block in ((const_i64(0), full, ROW_BLOCK), (full, n, 1)):
            with for_range(b, start, stop, block, f"rows{block}") as i:
                rows = [elem_ptr(b, elt, X, b.mul(b.add(i, const_i64(r)), d)) for r in range(block)]
                for r, s in enumerate(dot_rows(b, rows, q, d, elt, isa.lanes)):
                    store_elem(b, F32, out, b.add(i, const_i64(r)), s)
        b.ret_void()

    return emit


def rowdot_reference(X: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """numpy twin: ``X·q`` in fp32 (widening the codes)."""
    out = np.empty(X.shape[0], np.float32) if out is None else out
    return np.dot(X.astype(np.float32, copy=False), np.asarray(q, np.float32), out=out)


def _drive(native: Native, X: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    n, d = X.shape
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.shape != (d,):
        raise ValueError(f"rowdot: query has shape {q.shape}, rows have {d} components")
    if out is None:
        out = np.empty(n, np.float32)
    elif out.dtype != np.float32 or out.shape != (n,) or not out.flags.c_contiguous:
        raise ValueError(f"rowdot: out must be contiguous float32 of shape ({n},)")
    if n == 0:
        return out
    X = np.ascontiguousarray(X)
    parts = default_threads() if n >= PARALLEL_MIN_ROWS else 1
    row_bytes = d * X.itemsize
    native.run(
        [
            (X.ctypes.data + lo * row_bytes, hi - lo, d, q.ctypes.data, out.ctypes.data + 4 * lo)
            for lo, hi in split_range(0, n, parts, ROW_BLOCK)
        ]
    )
    return out


_PARAMS = [("X", PTR), ("n", I64), ("d", I64), ("q", PTR), ("out", PTR)]
ROWDOT: dict[np.dtype, Kernel] = {
    np.dtype(dtype): Kernel(
        f"rowdot_{np.dtype(dtype).name}", _PARAMS, _emitter(elt), twin=rowdot_reference, drive=_drive
    )
    for dtype, elt in ((np.float32, F32), (np.int16, I16), (np.int8, I8))
}
ROWDOT_MODULE = KernelModule("ep_rowdot", list(ROWDOT.values()))


def rowdot(X: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Σ_j X[i, j]·q[j] for every row, float32 (n,); X is (n, d) fp32, int16 or int8."""
    kernel = ROWDOT.get(X.dtype)
    if kernel is None:
        return rowdot_reference(X, q, out)
    return kernel(X, q, out)
