"""Row-wise and element-wise kernels that are hot between the matmuls: ``gelu_tanh(a)·b``,
and RMS normalization.

``exp`` is emitted inline (Cody–Waite range reduction to ``2^n·e^r``, ``|r| <= ln2/2``, and a
degree-6 polynomial; ~2 ulp), so the loop vectorizes on every target instead of calling libm
per element.  ``gelu_tanh(x) = 0.5·x·(1 + tanh(u)) = x / (1 + e^(−2u))`` with
``u = sqrt(2/π)·(x + 0.044715·x³)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir

from embedpipe.codegen.irutil import (
    F32,
    I16,
    I32,
    I64,
    PTR,
    RowSums,
    const_i64,
    fmuladd,
    for_range,
    gep_bytes,
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

_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# Taylor-like minimax coefficients of e^r on [-ln2/2, ln2/2] (Cephes expf).
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@dataclass(frozen=True)
class Reciprocal:
    """A reciprocal-estimate instruction: its LLVM intrinsic over ``lanes`` fp32 lanes, whether
    it takes AVX-512's (passthrough, mask) operands, and the Newton steps that bring its
    estimate (``bits`` correct) to fp32 precision."""

    intrinsic: str
    lanes: int
    bits: int
    masked: bool = False

    @property
    def newton_steps(self) -> int:
        return 1 if self.bits >= 12 else 2


RECIPROCALS: dict[str, Reciprocal] = {
    "rcp14": Reciprocal("llvm.x86.avx512.rcp14.ps.512", 16, 14, masked=True),
    "rcp": Reciprocal("llvm.x86.avx.rcp.ps.256", 8, 12),
    "frecpe": Reciprocal("llvm.aarch64.neon.frecpe.v4f32", 4, 8),
}


def reciprocal(b: ir.IRBuilder, m: ir.Module, isa: IsaSpec, x: ir.Value) -> ir.Value:
    """``1/x`` of an fp32 vector: the ISA's estimate refined by Newton steps
    (``r' = r + r·(1 − x·r)``, to within an ulp or two of the division) where the vector is
    a power-of-two number of its registers, a division otherwise.  A result below the smallest
    normal float (|x| > 2^126) may come out as zero.  Vector division is among the
    slowest instructions of every target; the estimate and a step are a few FMAs."""
    ty = x.type
    est = RECIPROCALS.get(isa.recip)
    n = ty.count if isinstance(ty, ir.VectorType) else 1
    if est is None or n % est.lanes or (n // est.lanes) & (n // est.lanes - 1):
        return b.fdiv(_fconst(ty, 1.0), x)
    part = vec(F32, est.lanes)
    args = [part, part, I16] if est.masked else [part]
    fn = intrinsic(m, est.intrinsic, part, args)
    pieces = []
    for i in range(n // est.lanes):
        xi = b.shuffle_vector(x, x, ir.Constant(vec(I32, est.lanes), list(range(i * est.lanes, (i + 1) * est.lanes))))
        ri = b.call(fn, [xi, ir.Constant(part, None), ir.Constant(I16, -1)] if est.masked else [xi])
        for _ in range(est.newton_steps):
            err = fmuladd(b, m, b.fsub(_fconst(part, 0.0), xi), ri, _fconst(part, 1.0))
            ri = fmuladd(b, m, ri, err, ri)
        pieces.append(ri)
    while len(pieces) > 1:  # concatenate pairwise back to the input's width
        w = pieces[0].type.count
        pieces = [
            b.shuffle_vector(pieces[j], pieces[j + 1], ir.Constant(vec(I32, 2 * w), list(range(2 * w))))
            for j in range(0, len(pieces), 2)
        ]
    return pieces[0]


def fma(b: ir.IRBuilder, m: ir.Module, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """``x·y + z`` of fp32 scalars or vectors, one fused instruction where the target has FMA
    (LLVM does not contract a separate multiply and add by itself)."""
    if isinstance(x.type, ir.VectorType):
        return fmuladd(b, m, x, y, z)
    return b.call(intrinsic(m, "llvm.fmuladd.f32", F32, [F32] * 3), [x, y, z])


def _fconst(ty: ir.Type, value: float) -> ir.Constant:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


EXP_FLOOR = -87.0  # e^x stays a normal float (a subnormal result costs a microcode assist per vector)
_MAGIC = 12582912.0  # 1.5·2^23: (v + M) − M rounds |v| < 2^22 to the nearest integer
_MAGIC_BITS = 0x4B400000  # fp32 bits of _MAGIC


def emit_exp(b: ir.IRBuilder, m: ir.Module, x: ir.Value, nonpositive: bool = False) -> ir.Value:
    """Vector ``e^x`` for fp32 lanes; inputs are clamped to [−87, 88.3] (no inf/NaN out for
    finite inputs; what the floor changes is below 1.7e-38, and every result is a normal
    float). ``nonpositive``: the caller guarantees x <= 0 (softmax terms), so one exponent
    field holds the scale 2^k (k >= −126), taken from the rounding constant's low bits;
    otherwise 2^k is built in two halves so k = 128 (x near 88.7) cannot overflow it."""
    ty = x.type
    n = ty.count
    ity = vec(I32, n)

    def fmin(a: ir.Value, c: float) -> ir.Value:
        return b.select(b.fcmp_ordered("<", a, _fconst(ty, c)), a, _fconst(ty, c))

    def fmax(a: ir.Value, c: float) -> ir.Value:
        return b.select(b.fcmp_ordered(">", a, _fconst(ty, c)), a, _fconst(ty, c))

    x = fmax(x if nonpositive else fmin(x, 88.3762626647949), EXP_FLOOR)
    magic = _fconst(ty, _MAGIC)
    t = fma(b, m, x, _fconst(ty, 1 / math.log(2)), magic)  # magic + round(x / ln 2)
    kf = b.fsub(t, magic)
    r = fma(b, m, kf, _fconst(ty, -_LN2_HI), x)
    r = fma(b, m, kf, _fconst(ty, -_LN2_LO), r)
    p = _fconst(ty, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = fma(b, m, p, r, _fconst(ty, c))
    er = fma(b, m, p, b.fmul(r, r), b.fadd(r, _fconst(ty, 1.0)))
    shift = ir.Constant(ity, [23] * n)
    if nonpositive:
        k127 = b.add(b.bitcast(t, ity), ir.Constant(ity, [127 - _MAGIC_BITS] * n))
        return b.fmul(er, b.bitcast(b.shl(k127, shift), ty))
    k = b.fptosi(kf, ity)
    k1 = b.ashr(k, ir.Constant(ity, [1] * n))
    k2 = b.sub(k, k1)
    bias = ir.Constant(ity, [127] * n)
    s1 = b.bitcast(b.shl(b.add(k1, bias), shift), ty)
    s2 = b.bitcast(b.shl(b.add(k2, bias), shift), ty)
    return b.fmul(b.fmul(er, s1), s2)


def gelu_tanh_mul_value(b: ir.IRBuilder, m: ir.Module, isa: IsaSpec, x: ir.Value, y: ir.Value) -> ir.Value:
    """``gelu_tanh(x)·y = x·y·σ(2u)``, ``u = sqrt(2/π)·(x + 0.044715·x³)``, of fp32 vectors or
    scalars (a scalar runs the vector code on one lane).

    ``σ(2u)`` is ``1/(1 + E)`` for ``u >= 0`` and ``E/(1 + E)`` below, with ``E = e^(−2|u|)``:
    the exponent is never positive, so the cheaper one-scale ``emit_exp`` applies, and ``1 + E``
    lies in [1, 2] (no overflow to infinity for large negative ``x``)."""
    ty = x.type
    if not isinstance(ty, ir.VectorType):
        return on_one_lane(b, lambda x1, y1: gelu_tanh_mul_value(b, m, isa, x1, y1), x, y)
    inner = fma(b, m, b.fmul(b.fmul(x, x), x), _fconst(ty, 0.044715), x)
    fabs = intrinsic(m, f"llvm.fabs.v{ty.count}f32", ty, [ty])
    e = emit_exp(b, m, b.fmul(b.call(fabs, [inner]), _fconst(ty, -2.0 * math.sqrt(2 / math.pi))), nonpositive=True)
    r = reciprocal(b, m, isa, b.fadd(e, _fconst(ty, 1.0)))
    sig = b.select(b.fcmp_ordered("<", inner, _fconst(ty, 0.0)), b.fmul(e, r), r)
    return b.fmul(b.fmul(x, y), sig)


def gelu_mul_symbol(isa: IsaSpec) -> str:
    return f"ep_gelu_mul_{isa.name}"


def emit_gelu_tanh_mul(m: ir.Module, isa: IsaSpec) -> str:
    """``void f(a, b, out, start, stop)``: out[i] = gelu_tanh(a[i])·b[i] for i in [start, stop),
    with ``start`` a multiple of the vector width (the tail runs one lane at a time)."""
    name = gelu_mul_symbol(isa)
    fn, b = new_function(m, name, [("a", PTR), ("b", PTR), ("out", PTR), ("start", I64), ("stop", I64)])
    a_ptr, b_ptr, out, start, stop = fn.args

    def body(ty: ir.Type, idx: ir.Value) -> None:
        off = b.mul(idx, const_i64(4))
        x = load_at(b, ty, a_ptr, off, 4)
        y = load_at(b, ty, b_ptr, off, 4)
        store_at(b, gelu_tanh_mul_value(b, m, isa, x, y), out, off, 4)

    sweep(b, start, stop, 2 * isa.lanes, body)
    b.ret_void()
    return name


def inv_rms(b: ir.IRBuilder, sums: RowSums, src: ir.Value, n: ir.Value, eps: ir.Value, tag: str) -> ir.Value:
    """``1 / sqrt(Σ src[i]² / n + eps)`` over the ``n`` floats at ``src``, summed in ``sums``
    (its lanes, then the tail): the one sequence every RMS norm, standalone or fused, runs."""

    def square(ty: ir.Type, i: ir.Value) -> None:
        v = load_at(b, ty, src, b.mul(i, const_i64(4)), 4)
        sums.add(ty, b.fmul(v, v))

    sums.zero()
    sweep(b, const_i64(0), n, sums.width, square, tag, F32)
    mean = b.fdiv(sums.total(), b.sitofp(n, F32))
    sqrt = intrinsic(b.module, "llvm.sqrt.f32", F32, [F32])
    return b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(mean, eps)]))


def rms_norm_symbol(isa: IsaSpec) -> str:
    return f"ep_rms_norm_{isa.name}"


def emit_rms_norm(m: ir.Module, isa: IsaSpec) -> str:
    """``void f(x, w, out, D, eps, r0, r1)``: rows ``[r0, r1)`` of ``x`` (R, D):
    ``out = x / sqrt(mean(x²) + eps) · w`` with the sum of squares in fp32 lanes."""
    name = rms_norm_symbol(isa)
    fn, b = new_function(
        m, name, [("x", PTR), ("w", PTR), ("out", PTR), ("D", I64), ("eps", F32), ("r0", I64), ("r1", I64)]
    )
    x, w, out, D, eps, r0, r1 = fn.args
    width = 2 * isa.lanes
    sums = RowSums(b, width)
    with for_range(b, r0, r1, 1, "row") as row:
        base = b.mul(b.mul(row, D), const_i64(4))
        inv = inv_rms(b, sums, gep_bytes(b, x, base), D, eps, "sq")

        def scale(ty: ir.Type, i: ir.Value) -> None:
            off = b.mul(i, const_i64(4))
            v = load_at(b, ty, x, b.add(base, off), 4)
            s = inv if ty is F32 else splat(b, inv, width)
            store_at(b, b.fmul(b.fmul(v, s), load_at(b, ty, w, off, 4)), out, b.add(base, off), 4)

        sweep(b, const_i64(0), D, width, scale, "sc", F32)
    b.ret_void()
    return name
