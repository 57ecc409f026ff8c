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
    const_i64,
    for_range,
    hsum_tree,
    intrinsic,
    load_at,
    new_function,
    on_one_lane,
    splat,
    store_at,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

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
    width = 2 * isa.lanes

    def body(ty: ir.Type, idx: ir.Value) -> None:
        off = b.mul(idx, const_i64(4))
        store_at(b, gelu_erf_value(b, m, isa, load_at(b, ty, a_ptr, off, 4)), out, off, 4)

    vstop = b.sub(stop, b.srem(b.sub(stop, start), const_i64(width)))
    with for_range(b, start, vstop, width, "v") as i:
        body(vec(F32, width), i)
    with for_range(b, vstop, stop, 1, "s") as i:
        body(vec(F32, 1), i)
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
    vt = vec(F32, width)
    acc = b.alloca(vt)
    tail = b.alloca(F32)
    vstop = b.sub(D, b.srem(D, const_i64(width)))
    n = b.sitofp(D, F32)
    sqrt = intrinsic(m, "llvm.sqrt.f32", F32, [F32])

    def reduce(base: ir.Value, term, tag: str) -> ir.Value:
        b.store(ir.Constant(vt, None), acc)
        b.store(ir.Constant(F32, 0.0), tail)
        with for_range(b, const_i64(0), vstop, width, tag) as i:
            v = load_at(b, vt, x, b.add(base, b.mul(i, const_i64(4))), 4)
            b.store(b.fadd(b.load(acc), term(v, width)), acc)
        with for_range(b, vstop, D, 1, tag + "t") as i:
            v = load_at(b, F32, x, b.add(base, b.mul(i, const_i64(4))), 4)
            b.store(b.fadd(b.load(tail), term(v, 0)), tail)
        return b.fadd(hsum_tree(b, b.load(acc)), b.load(tail))

    with for_range(b, r0, r1, 1, "row") as row:
        base = b.mul(b.mul(row, D), const_i64(4))
        mean = b.fdiv(reduce(base, lambda v, k: v, "sum"), n)

        def centred(v: ir.Value, k: int) -> ir.Value:
            return b.fsub(v, splat(b, mean, k) if k else mean)

        var = b.fdiv(reduce(base, lambda v, k: b.fmul(centred(v, k), centred(v, k)), "sq"), n)
        inv = b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(var, eps)]))
        for ty, lo, hi, step, tag in ((vt, const_i64(0), vstop, width, "sc"), (F32, vstop, D, 1, "sct")):
            with for_range(b, lo, hi, step, tag) as i:
                off = b.mul(i, const_i64(4))
                k = width if ty is vt else 0
                v = centred(load_at(b, ty, x, b.add(base, off), 4), k)
                s = splat(b, inv, width) if k else inv
                y = b.fadd(b.fmul(b.fmul(v, s), load_at(b, ty, w, off, 4)), load_at(b, ty, bias, off, 4))
                store_at(b, y, out, b.add(base, off), 4)
    b.ret_void()
    return name
