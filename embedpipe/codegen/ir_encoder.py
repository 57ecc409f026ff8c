"""Element-wise and row-wise kernels of post-LayerNorm encoders: exact (erf) GELU and
LayerNorm with bias.

``erf`` follows Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7):
``erf(z) = 1 − t·P(t)·e^(−z²)``, ``t = 1/(1 + p·z)`` for ``z ≥ 0``, odd in ``z``; so
``gelu(x) = x − h`` for ``x ≥ 0`` and ``h`` for ``x < 0`` with ``h = x·t·P(t)·e^(−x²/2)/2``
and ``z = |x|/√2``. ``e^y`` is the inline vector exp of ``ir_elementwise``.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from embedpipe.codegen.ir_elementwise import _fconst, emit_exp, fma, reciprocal
from embedpipe.codegen.irutil import (
    F32,
    I64,
    PTR,
    RowSums,
    const_i64,
    for_range,
    hmax_tree,
    intrinsic,
    load_at,
    new_function,
    on_one_lane,
    splat,
    store_at,
    sweep,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

ROUND_MAGIC = 12582912.0  # 1.5·2**23: (v + M) − M rounds |v| < 2**22 half to even
QK = 32
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def gelu_erf_symbol(isa: IsaSpec) -> str:
    return f"ep_gelu_erf_{isa.name}"


def gelu_erf_value(b: ir.IRBuilder, m: ir.Module, isa: IsaSpec, x: ir.Value) -> ir.Value:
    """``gelu_erf(x)`` of an fp32 vector or scalar (a scalar runs the vector code on one lane)."""
    ty = x.type
    if not isinstance(ty, ir.VectorType):
        return on_one_lane(b, lambda x1: gelu_erf_value(b, m, isa, x1), x)
    neg = b.fcmp_ordered("<", x, _fconst(ty, 0.0))
    ax = b.select(neg, b.fsub(_fconst(ty, 0.0), x), x)
    t = reciprocal(b, m, isa, fma(b, m, ax, _fconst(ty, ERF_P / math.sqrt(2)), _fconst(ty, 1.0)))
    poly = _fconst(ty, ERF_A[4])
    for c in reversed(ERF_A[:4]):
        poly = fma(b, m, poly, t, _fconst(ty, c))
    e = emit_exp(b, m, b.fmul(b.fmul(x, x), _fconst(ty, -0.5)), nonpositive=True)
    h = b.fmul(b.fmul(b.fmul(poly, t), e), b.fmul(x, _fconst(ty, 0.5)))
    return b.select(neg, h, b.fsub(x, h))


def emit_gelu_erf(m: ir.Module, isa: IsaSpec) -> str:
    """``void f(a, out, start, stop)``: out[i] = gelu_erf(a[i]) for i in [start, stop)."""
    name = gelu_erf_symbol(isa)
    fn, b = new_function(m, name, [("a", PTR), ("out", PTR), ("start", I64), ("stop", I64)])
    a_ptr, out, start, stop = fn.args

    def body(ty: ir.Type, idx: ir.Value) -> None:
        off = b.mul(idx, const_i64(4))
        store_at(b, gelu_erf_value(b, m, isa, load_at(b, ty, a_ptr, off, 4)), out, off, 4)

    sweep(b, start, stop, 2 * isa.lanes, body)
    b.ret_void()
    return name


def layer_norm_symbol(isa: IsaSpec) -> str:
    return f"ep_layer_norm_{isa.name}"


def emit_layer_norm(m: ir.Module, isa: IsaSpec) -> str:
    """``void f(x, w, bias, out, D, eps, r0, r1)``: rows ``[r0, r1)`` of ``x`` (R, D):
    ``out = (x − mean) / sqrt(var + eps) · w + bias``, mean and variance in fp32 lanes
    (two passes, so the variance does not cancel)."""
    name = layer_norm_symbol(isa)
    fn, b = new_function(
        m,
        name,
        [("x", PTR), ("w", PTR), ("bias", PTR), ("out", PTR), ("D", I64), ("eps", F32), ("r0", I64), ("r1", I64)],
    )
    x, w, bias, out, D, eps, r0, r1 = fn.args
    width = 2 * isa.lanes
    sums = RowSums(b, width)
    n = b.sitofp(D, F32)
    zero = const_i64(0)
    sqrt = intrinsic(m, "llvm.sqrt.f32", F32, [F32])

    def spread(ty: ir.Type, s: ir.Value) -> ir.Value:
        return s if ty is F32 else splat(b, s, width)

    with for_range(b, r0, r1, 1, "row") as row:
        base = b.mul(b.mul(row, D), const_i64(4))

        def at(ty: ir.Type, i: ir.Value) -> ir.Value:
            return load_at(b, ty, x, b.add(base, b.mul(i, const_i64(4))), 4)

        sums.zero()
        sweep(b, zero, D, width, lambda ty, i: sums.add(ty, at(ty, i)), "sum", F32)
        mean = b.fdiv(sums.total(), n)

        def square(ty: ir.Type, i: ir.Value) -> None:
            c = b.fsub(at(ty, i), spread(ty, mean))
            sums.add(ty, b.fmul(c, c))

        sums.zero()
        sweep(b, zero, D, width, square, "sq", F32)
        inv = b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(b.fdiv(sums.total(), n), eps)]))

        def scale(ty: ir.Type, i: ir.Value) -> None:
            off = b.mul(i, const_i64(4))
            c = b.fsub(at(ty, i), spread(ty, mean))
            y = b.fadd(b.fmul(b.fmul(c, spread(ty, inv)), load_at(b, ty, w, off, 4)), load_at(b, ty, bias, off, 4))
            store_at(b, y, out, b.add(base, off), 4)

        sweep(b, zero, D, width, scale, "sc", F32)
    b.ret_void()
    return name


class ResidualNormRow:
    """Emits one row of a post-LayerNorm encoder's residual LayerNorm, and its extension by
    the residuals of selected blocks (``encoder_fused`` describes both). Built once per
    function (its accumulators are allocas), then ``emit``/``extend`` per row, so the
    standalone kernel and a fused product prologue compute the same instruction sequence."""

    def __init__(self, b: ir.IRBuilder, isa: IsaSpec) -> None:
        self.b, self.width = b, 2 * isa.lanes
        self.sums = RowSums(b, self.width)

    def _sweep(self, D: ir.Value, body, tag: str) -> None:
        sweep(self.b, const_i64(0), D, self.width, body, tag)

    def emit(
        self,
        x: ir.Value,
        bias: ir.Value,
        res: ir.Value,
        w: ir.Value,
        beta: ir.Value,
        out: ir.Value,
        D: ir.Value,
        eps: ir.Value,
    ) -> None:
        """``out = LayerNorm(x + bias + res)·w + beta`` over one row of ``D`` (row pointers;
        ``out`` holds the sum in between)."""
        b = self.b
        sqrt = intrinsic(b.module, "llvm.sqrt.f32", F32, [F32])
        n = b.sitofp(D, F32)
        sums = self.sums
        sums.zero()

        def add(ty: ir.Type, i: ir.Value) -> None:
            off = b.mul(i, const_i64(4))
            v = b.fadd(load_at(b, ty, x, off, 4), load_at(b, ty, bias, off, 4))
            v = b.fadd(v, load_at(b, ty, res, off, 4))
            store_at(b, v, out, off, 4)
            sums.add(ty, v)

        self._sweep(D, add, "sum")
        mean = b.fdiv(sums.total(), n)
        sums.zero()

        def square(ty: ir.Type, i: ir.Value) -> None:
            c = b.fsub(load_at(b, ty, out, b.mul(i, const_i64(4)), 4), splat(b, mean, ty.count))
            sums.add(ty, b.fmul(c, c))

        self._sweep(D, square, "sq")
        inv = b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(b.fdiv(sums.total(), n), eps)]))

        def scale(ty: ir.Type, i: ir.Value) -> None:
            off = b.mul(i, const_i64(4))
            c = b.fsub(load_at(b, ty, out, off, 4), splat(b, mean, ty.count))
            y = b.fmul(b.fmul(c, splat(b, inv, ty.count)), load_at(b, ty, w, off, 4))
            store_at(b, b.fadd(y, load_at(b, ty, beta, off, 4)), out, off, 4)

        self._sweep(D, scale, "sc")

    def extend(self, v: ir.Value, ext: ir.Value, sel: ir.Value, nsel: ir.Value, D: ir.Value) -> None:
        """``ext`` = the row ``v`` (``D`` values), then for each of the ``nsel`` block numbers
        in ``sel`` (int64, checked by the driver) the block's residual ``v_b − grid(v_b)``."""
        b = self.b
        vf = vec(F32, QK)
        fabs = intrinsic(b.module, f"llvm.fabs.v{QK}f32", vf, [vf])
        self._sweep(
            D,
            lambda ty, i: store_at(b, load_at(b, ty, v, b.mul(i, const_i64(4)), 4), ext, b.mul(i, const_i64(4)), 4),
            "cp",
        )
        with for_range(b, const_i64(0), nsel, 1, "blk") as s:
            blk = load_at(b, I64, sel, b.mul(s, const_i64(8)), 8)
            block = load_at(b, vf, v, b.mul(blk, const_i64(4 * QK)), 4)
            d = b.fdiv(hmax_tree(b, b.call(fabs, [block])), ir.Constant(F32, 127.0))
            nz = b.fcmp_ordered("!=", d, ir.Constant(F32, 0.0))
            inv_d = b.select(nz, b.fdiv(ir.Constant(F32, 1.0), d), ir.Constant(F32, 0.0))
            magic = _fconst(vf, ROUND_MAGIC)
            q = b.fsub(b.fadd(b.fmul(block, splat(b, inv_d, QK)), magic), magic)
            lo = b.fsub(block, b.fmul(q, splat(b, d, QK)))
            store_at(b, lo, ext, b.mul(b.add(D, b.mul(s, const_i64(QK))), const_i64(4)), 4)
