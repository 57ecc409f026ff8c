"""Activation quantization for the integer matmuls: fp32 rows to Q8_0 blocks of ``QK``.

Each 32-element block gets ``d = amax/127`` and ``q = round(x/d)`` (round half to even),
exactly like ggml's Q8_0, so a product on these codes is the one llama.cpp computes.  The
``quantize`` kernel writes the codes (int8, or int16 where the ISA's dot takes pairs), the
fp32 scale per block, and ``-128·Σq`` per block: the start of a ``vpdpbusd`` accumulator
that removes the ``+128`` offset of the u8 weights (``ir_q8``).  ``quantize_reference`` is
its numpy twin, bit for bit.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I1,
    I8,
    I16,
    I32,
    I64,
    PTR,
    const_i64,
    for_range,
    hmax_tree,
    intrinsic,
    load_at,
    loop,
    new_function,
    splat,
    store_at,
    var,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

QK = 32  # elements per quantization block


def act_elem_bytes(isa: IsaSpec) -> int:
    """Bytes per quantized activation element: int8 for byte dots, int16 for pair dots."""
    return 1 if isa.kgroup == 4 else 2


QUANTIZE_PARAMS = [("x", PTR), ("xq", PTR), ("xd", PTR), ("xc", PTR), ("T", I64), ("K", I64), ("t0", I64), ("t1", I64)]


def quantize_symbol(isa: IsaSpec) -> str:
    return f"ep_q8quant_{isa.name}"


def emit_quantize(m: ir.Module, isa: IsaSpec) -> str:
    """``void f(x, xq, xd, xc, T, K, t0, t1)``: Q8_0-quantize fp32 rows ``[t0, t1)``.

    ``xq`` gets int8 (or int16) values, ``xd`` the fp32 scale per block and ``xc`` the int32
    ``-128·Σq`` per block (the VNNI offset correction).  Rows ``>= T`` (tile padding) are
    zero-filled, never read from ``x``.

    Where a vector holds 16 floats, blocks go in groups (``GROUPS``): the per-block maxima and
    sums of a group are reduced together (``_reduce_lanes``) and its scales divided as one
    vector, instead of a horizontal reduction and two scalar divisions per block; the
    remaining blocks take the one-block path.  Both do the same fp32 operations on every
    element, so the results are the same bits.
    """
    eb = act_elem_bytes(isa)
    qt = I8 if eb == 1 else I16
    name = quantize_symbol(isa)
    fn, b = new_function(m, name, QUANTIZE_PARAMS)
    x, xq, xd, xc, T, K, t0, t1 = fn.args
    nb = b.sdiv(K, const_i64(QK))
    groups = GROUPS if isa.lanes >= HALF else ()
    with for_range(b, t0, t1, 1, "t") as t:
        with b.if_else(b.icmp_signed("<", t, T)) as (real, pad):
            with real:
                first = var(b, I64, const_i64(0))
                for size in groups:
                    # the largest group repeats; each smaller one runs at most once
                    with loop(b, f"g{size}") as group:
                        g = b.load(first)
                        group.break_unless(b.icmp_signed("<=", b.add(g, const_i64(size)), nb))
                        _quantize_group(b, m, qt, eb, x, xq, xd, xc, t, K, nb, g, size)
                        b.store(b.add(g, const_i64(size)), first)
                        if size != groups[0]:
                            group.break_if(ir.Constant(I1, 1))
                with for_range(b, b.load(first), nb, 1, "blk") as blk:
                    _quantize_block(b, m, qt, eb, x, xq, xd, xc, t, K, nb, blk)
            with pad:
                with for_range(b, const_i64(0), nb, 1, "zblk") as blk:
                    eidx = b.add(b.mul(t, K), b.mul(blk, const_i64(QK)))
                    sidx = b.mul(b.add(b.mul(t, nb), blk), const_i64(4))
                    store_at(b, ir.Constant(vec(qt, QK), None), xq, b.mul(eidx, const_i64(eb)), eb)
                    store_at(b, ir.Constant(F32, 0.0), xd, sidx, 4)
                    store_at(b, ir.Constant(I32, 0), xc, sidx, 4)
    b.ret_void()
    return name


HALF = QK // 2  # floats per half block: one 512-bit vector
GROUPS = (16, 8, 4)  # block group sizes of the grouped path, largest first


def _round_to_int(b: ir.IRBuilder, v: ir.Value, inv: ir.Value) -> ir.Value:
    """``round_half_even(v·inv)`` as int32 lanes: ``lrint`` in the default rounding mode, one
    conversion instruction on x86 (``vcvtps2dq``) where the magic-number rounding took three."""
    n = v.type.count
    fn = intrinsic(b.module, f"llvm.lrint.v{n}i32.v{n}f32", vec(I32, n), [vec(F32, n)])
    return b.call(fn, [b.fmul(v, inv)])


def _scale_and_inverse(b: ir.IRBuilder, amax: ir.Value) -> tuple[ir.Value, ir.Value]:
    """``d = amax/127`` and ``1/d`` (0 where d is 0), lane by lane, for a scalar or a vector."""
    ty = amax.type
    if isinstance(ty, ir.VectorType):
        const = lambda c: ir.Constant(ty, [c] * ty.count)  # noqa: E731
    else:
        const = lambda c: ir.Constant(ty, c)  # noqa: E731
    d = b.fdiv(amax, const(127.0))
    inv = b.select(b.fcmp_ordered("!=", d, const(0.0)), b.fdiv(const(1.0), d), const(0.0))
    return d, inv


def _quantize_block(b, m, qt, eb, x, xq, xd, xc, t, K, nb, blk) -> None:
    """One block of row ``t``: horizontal max, scalar scale, 32 codes, their sum."""
    vf, vi = vec(F32, QK), vec(I32, QK)
    eidx = b.add(b.mul(t, K), b.mul(blk, const_i64(QK)))
    sidx = b.mul(b.add(b.mul(t, nb), blk), const_i64(4))
    v = load_at(b, vf, x, b.mul(eidx, const_i64(4)), 4)
    fabs = intrinsic(m, f"llvm.fabs.v{QK}f32", vf, [vf])
    d, inv = _scale_and_inverse(b, hmax_tree(b, b.call(fabs, [v])))
    q = _round_to_int(b, v, splat(b, inv, QK))
    fsum = intrinsic(m, f"llvm.vector.reduce.add.v{QK}i32", I32, [vi])
    store_at(b, b.trunc(q, vec(qt, QK)), xq, b.mul(eidx, const_i64(eb)), eb)
    store_at(b, d, xd, sidx, 4)
    store_at(b, b.mul(b.call(fsum, [q]), ir.Constant(I32, -128)), xc, sidx, 4)


def _quantize_group(b, m, qt, eb, x, xq, xd, xc, t, K, nb, g, size: int) -> None:
    """Blocks ``[g, g + size)`` of row ``t``, each as two half vectors: per-block |max| and
    code sums reduced across the group's vectors at once, scales divided as one vector."""
    vf, vi = vec(F32, HALF), vec(I32, HALF)
    fabs = intrinsic(m, f"llvm.fabs.v{HALF}f32", vf, [vf])
    row = b.add(b.mul(t, K), b.mul(g, const_i64(QK)))
    halves = [
        [load_at(b, vf, x, b.mul(b.add(row, const_i64(j * QK + h * HALF)), const_i64(4)), 4) for h in (0, 1)]
        for j in range(size)
    ]

    def fmax(lo: ir.Value, hi: ir.Value) -> ir.Value:
        return b.select(b.fcmp_ordered(">", lo, hi), lo, hi)

    amax = _reduce_lanes(b, [fmax(b.call(fabs, [lo]), b.call(fabs, [hi])) for lo, hi in halves], fmax)
    d, inv = _scale_and_inverse(b, amax)
    sums = []
    for j, pair in enumerate(halves):
        inv_j = splat(b, b.extract_element(inv, ir.Constant(I32, j)), HALF)
        codes = [_round_to_int(b, h, inv_j) for h in pair]
        for h, q in enumerate(codes):
            off = b.mul(b.add(row, const_i64(j * QK + h * HALF)), const_i64(eb))
            store_at(b, b.trunc(q, vec(qt, HALF)), xq, off, eb)
        sums.append(b.add(codes[0], codes[1]))
    corr = b.mul(_reduce_lanes(b, sums, b.add), ir.Constant(vi, [-128] * HALF))
    sidx = b.mul(b.add(b.mul(t, nb), g), const_i64(4))
    first = ir.Constant(vec(I32, size), list(range(size)))
    store_at(b, b.shuffle_vector(d, d, first), xd, sidx, 4)
    store_at(b, b.shuffle_vector(corr, corr, first), xc, sidx, 4)


def _reduce_lanes(b: ir.IRBuilder, vectors: list[ir.Value], combine) -> ir.Value:
    """Lane ``j`` of the result is ``combine`` folded over the lanes of ``vectors[j]`` (a
    transposing tree: each step merges two vectors, halving every source's share of lanes,
    until each source owns one lane).  ``combine`` must be associative and commutative, and
    the vector count and width powers of two."""
    n = vectors[0].type.count
    assert n & (n - 1) == 0 and len(vectors) & (len(vectors) - 1) == 0 and len(vectors) <= n
    # per vector: source index -> the lanes holding its partial results
    level = [(v, {j: list(range(n))}) for j, v in enumerate(vectors)]
    while len(level) > 1 or any(len(lanes) > 1 for lanes in level[0][1].values()):
        merged = []
        for i in range(0, len(level), 2):
            a, la = level[i]
            if i + 1 < len(level):
                c, lc = level[i + 1]
                owners = {**la, **{j: [n + lane for lane in lanes] for j, lanes in lc.items()}}
            else:
                c, owners = a, dict(la)
            lo, hi, layout = [], [], {}
            for j in sorted(owners):
                lanes = owners[j]
                half = len(lanes) // 2
                layout[j] = list(range(len(lo), len(lo) + half))
                lo += lanes[:half]
                hi += lanes[half:]
            lo_mask, hi_mask = (ir.Constant(vec(I32, n), idx + [0] * (n - len(idx))) for idx in (lo, hi))
            merged.append((combine(b.shuffle_vector(a, c, lo_mask), b.shuffle_vector(a, c, hi_mask)), layout))
        level = merged
    return level[0][0]


def quantize_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of the emitted ``quantize`` kernel (same fp32 ops, round half to even)."""
    t, k = x.shape
    blocks = x.astype(np.float32).reshape(t, k // QK, QK)
    amax = np.abs(blocks).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.round(blocks * inv[:, :, None]).astype(np.int8)
    return q.reshape(t, k), d
