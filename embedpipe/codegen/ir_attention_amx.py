"""IR of softmax attention on bf16 tile products (AMX-BF16): the work items, tiling and
numbers of ``ir_attention``'s fp32 kernel, with both products on the tile unit.

A work item (one sequence × one KV head × one tile of query positions, from the same work
table as the fp32 kernel) runs in four stages over its thread's scratch:

1. pack the operands as bf16 (rounded to nearest even): the tile's query rows row-major
   ``Qb[r][d]`` (A tiles), the keys it can see as pairs of ``d`` transposed,
   ``Kp[d/2][x][2]`` (B tiles), and the values as pairs of keys, ``Vp[x/2][c][2]`` (B tiles);
   rows past the tile, keys past the sequence and columns past ``d``/``dv`` are zeros;
2. ``S[r][x] = Qb[r]·Kp[:, x]``: 2 × 2 blocks of 16 × 16 fp32 tiles, a ``tdpbf16ps`` per
   32 of ``d``;
3. softmax along each row of S over the keys the row sees (exactly 0 elsewhere), the
   weights rounded to bf16 into ``P[r][x]``, ``1 / ΣP`` kept per row;
4. ``O = P·Vp`` in 2 × 2 blocks of tiles over 32 keys a product, scaled by ``1 / ΣP`` into
   the output rows.

The key range ``[x0, x0 + span)`` starts on a multiple of 32 keys from the sequence's first,
so every row's keys meet the same tile grid and sums whatever the item's bounds: a row's
numbers depend only on its own sequence (batch invariance, as in the fp32 kernel). The
scores of the whole key range are held (``bq·group`` rows of it, never T × T); scratch is
sized by ``keys``, the largest span a call may meet.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from embedpipe.codegen.ir_attention import PARAMS as FP32_PARAMS
from embedpipe.codegen.ir_attention import claim_items, item_bounds, query_row, window
from embedpipe.codegen.ir_elementwise import emit_exp
from embedpipe.codegen.ir_tiles import ALIGN, BLOCK, CHUNK, LANES, TILE, TileEmitter
from embedpipe.codegen.irutil import (
    F32,
    I16,
    I32,
    I64,
    for_range,
    gep_bytes,
    hmax_tree,
    hsum_tree,
    imin,
    load_elem,
    masked_store_f32,
    round_up,
    splat,
    store_at,
    store_elem,
    transpose_square,
    var,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

PARAMS = [*FP32_PARAMS, ("keys", I64)]


def section_sizes(rp, dp, vp, keys, mul) -> tuple:
    """Bytes of (Qb, Kp, Vp, S, P, O, 1/ΣP) for ``rp`` query rows, padded key and value widths
    ``dp``/``vp`` and spans of ``keys``; ``mul`` multiplies its arguments (ints here, IR values
    in the kernel)."""
    return (
        mul(rp, dp, 2),
        mul(dp, keys, 2),
        mul(keys, vp, 2),
        mul(rp, keys, 4),
        mul(rp, keys, 2),
        mul(BLOCK * BLOCK, 4),
        mul(rp, 4),
    )


def scratch_bytes(group: int, bq: int, d: int, dv: int, keys: int) -> int:
    """Bytes of one thread's scratch for tiles of ``bq`` positions and spans up to ``keys``."""
    rp, dp, vp = round_up(group * bq, BLOCK), round_up(d, CHUNK), round_up(dv, BLOCK)
    return sum(round_up(s, ALIGN) for s in section_sizes(rp, dp, vp, keys, lambda *xs: math.prod(xs)))


def key_capacity(longest: int) -> int:
    """``keys`` for sequences of up to ``longest`` rows: an item's span starts on the key grid
    at or after position 0 and ends at the sequence's end rounded up to it."""
    return round_up(max(longest, 1), CHUNK)


class _Emitter(TileEmitter):
    """Builds the kernel body; one method per stage of a work item."""

    def __init__(self, b: ir.IRBuilder) -> None:
        super().__init__(b)
        (self.q, self.k, self.v, self.out, self.work, self.n_work, self.counter, self.scratch) = b.function.args[:8]
        (self.group, self.n_q, self.n_kv, self.d, self.dv, self.hw, self.bq, self.keys) = b.function.args[8:]

    # -- the kernel ------------------------------------------------------------------------

    def emit(self) -> None:
        b = self.b
        self.dp, self.vp = self.up(self.d, CHUNK), self.up(self.dv, BLOCK)
        rp_max = self.up(b.mul(self.group, self.bq), BLOCK)
        sizes = section_sizes(rp_max, self.dp, self.vp, self.keys, self.mul)
        self.qb, self.kp, self.vpk, self.s, self.p, self.o, self.inv = self.sections(self.scratch, list(sizes))
        self.windowed, self.hw_mask = window(b, self.hw)
        self.configure("attention_tiles")
        claim_items(b, self.counter, self.n_work, self.item)
        self.release()
        b.ret_void()

    def item(self, w: ir.Value) -> None:
        b = self.b
        self.a, self.t, self.i0, self.h, self.i1, self.rows, lo, hi = item_bounds(
            b, self.work, w, self.bq, self.group, self.windowed, self.hw
        )
        self.rp = self.up(self.rows, BLOCK)
        self.x0 = b.mul(b.sdiv(lo, self.c(CHUNK)), self.c(CHUNK))
        self.span = b.sub(self.up(hi, CHUNK), self.x0)
        self.pack_queries()
        self.pack_keys()
        self.pack_values()
        self.scores()
        self.softmax()
        self.weighted_values()

    def q_row(self, r: ir.Value) -> ir.Value:
        return query_row(self.b, self.a, self.i0, self.h, self.group, self.n_q, r)

    def kv_row(self, x: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(row index in k/v of key ``x0 + x`` — clamped into the sequence —, whether it is one)."""
        b = self.b
        j = b.add(self.x0, x)
        ok = b.icmp_signed("<", j, self.t)
        j = imin(b, j, b.sub(self.t, self.c(1)))
        return b.add(b.mul(b.add(self.a, j), self.n_kv), self.h), ok

    def pack_queries(self) -> None:
        b = self.b
        last = b.sub(self.rows, self.c(1))
        with for_range(b, self.c(0), self.rp, 1, "qrow") as r:
            ok = b.icmp_signed("<", r, self.rows)
            src = b.gep(self.q, [b.mul(self.q_row(imin(b, r, last)), self.d)], source_etype=F32)
            dst = b.mul(r, self.dp)  # bf16 elements
            with for_range(b, self.c(0), b.sdiv(self.dp, self.c(2)), LANES, "qw") as w0:
                words = self.row_words(src, w0, self.d, ok)
                store_at(b, words, self.qb, b.mul(b.add(dst, b.mul(w0, self.c(2))), self.c(2)), 4)

    def pack_keys(self) -> None:
        """Kp[w][x] = key x's pair word w: 16 keys × 16 words transposed in registers."""
        b = self.b
        with for_range(b, self.c(0), self.span, LANES, "kx") as xb:
            rows = []
            for i in range(LANES):
                row, ok = self.kv_row(b.add(xb, self.c(i)))
                rows.append((b.gep(self.k, [b.mul(row, self.d)], source_etype=F32), ok))
            with for_range(b, self.c(0), b.sdiv(self.dp, self.c(2)), LANES, "kw") as w0:
                words = [self.row_words(src, w0, self.d, ok) for src, ok in rows]
                for c, col in enumerate(transpose_square(b, words)):
                    at = b.add(b.mul(b.add(w0, self.c(c)), self.span), xb)
                    store_at(b, col, self.kp, b.mul(at, self.c(4)), 4)

    def pack_values(self) -> None:
        """Vp[x/2][c] = (V[x][c], V[x+1][c]) as a pair word."""
        b = self.b
        with for_range(b, self.c(0), self.span, 2, "vx") as x:
            r0, ok0 = self.kv_row(x)
            r1, ok1 = self.kv_row(b.add(x, self.c(1)))
            src0 = b.gep(self.v, [b.mul(r0, self.dv)], source_etype=F32)
            src1 = b.gep(self.v, [b.mul(r1, self.dv)], source_etype=F32)
            dst = b.mul(b.sdiv(x, self.c(2)), self.vp)
            with for_range(b, self.c(0), self.vp, LANES, "vc") as c0:
                words = self.pair_words(
                    self.load_floats(src0, c0, self.dv, ok0), self.load_floats(src1, c0, self.dv, ok1)
                )
                store_at(b, words, self.vpk, b.mul(b.add(dst, c0), self.c(4)), 4)

    def scores(self) -> None:
        b = self.b
        q_stride = b.mul(self.dp, self.c(2))
        k_stride = b.mul(self.span, self.c(4))
        s_stride = b.mul(self.span, self.c(4))
        with for_range(b, self.c(0), self.rp, BLOCK, "srb") as rb:
            with for_range(b, self.c(0), self.span, BLOCK, "sxb") as xb:
                self.zero_block()
                with for_range(b, self.c(0), self.dp, CHUNK, "sdc") as dc:
                    a0 = gep_bytes(b, self.qb, b.mul(b.add(b.mul(rb, self.dp), dc), self.c(2)))
                    a1 = gep_bytes(b, a0, b.mul(q_stride, self.c(TILE)))
                    k_at = b.add(b.mul(b.sdiv(dc, self.c(2)), self.span), xb)
                    b0 = gep_bytes(b, self.kp, b.mul(k_at, self.c(4)))
                    b1 = gep_bytes(b, b0, self.c(TILE * 4))
                    self.block_product((a0, a1, q_stride), (b0, b1, k_stride))
                base = gep_bytes(b, self.s, b.mul(b.add(b.mul(rb, self.span), xb), self.c(4)))
                self.store_block(base, s_stride)

    def softmax(self) -> None:
        """P[r][x] = bf16(e^(S − max)) over the keys row r sees, 1/ΣP per row; zero rows pad."""
        b, vt, it = self.b, self.vt, self.it
        neg_inf = ir.Constant(vt, [float("-inf")] * LANES)
        zero = ir.Constant(vt, None)
        underflow = ir.Constant(vt, [-64.0] * LANES)
        hw_pos = splat(b, self.hw_mask, LANES)
        hw_neg = b.neg(hw_pos)
        t = splat(b, b.trunc(self.t, I32), LANES)
        iota = ir.Constant(it, list(range(LANES)))
        with for_range(b, self.c(0), self.rp, 1, "prow") as r:
            real = b.icmp_signed("<", r, self.rows)
            pos = splat(b, b.trunc(b.add(self.i0, b.sdiv(r, self.group)), I32), LANES)
            srow = b.gep(self.s, [b.mul(r, self.span)], source_etype=F32)
            prow = b.mul(r, self.span)  # bf16 elements

            def visible(x: ir.Value) -> ir.Value:
                j = b.add(splat(b, b.trunc(b.add(self.x0, x), I32), LANES), iota)
                dist = b.sub(pos, j)
                near = b.and_(b.icmp_signed("<=", dist, hw_pos), b.icmp_signed(">=", dist, hw_neg))
                return b.and_(b.and_(near, b.icmp_signed("<", j, t)), splat(b, real, LANES))

            mt = var(b, vt, neg_inf)
            with for_range(b, self.c(0), self.span, LANES, "pmax") as x:
                s = b.select(visible(x), b.load(b.gep(srow, [x], source_etype=F32), typ=vt, align=4), neg_inf)
                cur = b.load(mt)
                b.store(b.select(b.fcmp_ordered(">", s, cur), s, cur), mt)
            m = splat(b, hmax_tree(b, b.load(mt)), LANES)
            total = var(b, vt, zero)
            with for_range(b, self.c(0), self.span, LANES, "pexp") as x:
                diff = b.fsub(b.load(b.gep(srow, [x], source_etype=F32), typ=vt, align=4), m)
                ok = b.and_(visible(x), b.fcmp_ordered(">=", diff, underflow))
                p = b.select(ok, emit_exp(b, self.m, diff, nonpositive=True), zero)
                bits = self.bf16_bits(p)
                b.store(b.fadd(b.load(total), self.rounded(bits)), total)
                store_at(b, b.trunc(bits, vec(I16, LANES)), self.p, b.mul(b.add(prow, x), self.c(2)), 2)
            l_sum = hsum_tree(b, b.load(total))
            inv = b.select(real, b.fdiv(ir.Constant(F32, 1.0), l_sum), ir.Constant(F32, 0.0))
            store_elem(b, F32, self.inv, r, inv)

    def weighted_values(self) -> None:
        """O = P·Vp in 2 × 2 blocks of tiles, scaled by 1/ΣP into the output rows."""
        b = self.b
        p_stride = b.mul(self.span, self.c(2))
        v_stride = b.mul(self.vp, self.c(4))
        o_stride = self.c(BLOCK * 4)
        with for_range(b, self.c(0), self.rp, BLOCK, "orb") as rb:
            with for_range(b, self.c(0), self.vp, BLOCK, "ocb") as cb:
                self.zero_block()
                with for_range(b, self.c(0), self.span, CHUNK, "oxc") as xc:
                    a0 = gep_bytes(b, self.p, b.mul(b.add(b.mul(rb, self.span), xc), self.c(2)))
                    a1 = gep_bytes(b, a0, b.mul(p_stride, self.c(TILE)))
                    b0 = gep_bytes(b, self.vpk, b.mul(b.add(b.mul(b.sdiv(xc, self.c(2)), self.vp), cb), self.c(4)))
                    b1 = gep_bytes(b, b0, self.c(TILE * 4))
                    self.block_product((a0, a1, p_stride), (b0, b1, v_stride))
                self.store_block(self.o, o_stride)
                self.write_block(rb, cb)

    def write_block(self, rb: ir.Value, cb: ir.Value) -> None:
        b, vt = self.b, self.vt
        rows_here = imin(b, self.c(BLOCK), b.sub(self.rows, rb))
        with for_range(b, self.c(0), rows_here, 1, "wrow") as rr:
            r = b.add(rb, rr)
            inv = splat(b, load_elem(b, F32, self.inv, r), LANES)
            dst = b.gep(self.out, [b.add(b.mul(self.q_row(r), self.dv), cb)], source_etype=F32)
            for half in range(2):
                x = b.load(gep_bytes(b, self.o, b.add(b.mul(rr, self.c(BLOCK * 4)), self.c(half * TILE * 4))), typ=vt)
                rem = b.sub(b.sub(self.dv, cb), self.c(half * TILE))
                with b.if_then(b.icmp_signed(">", rem, self.c(0))):
                    ptr = b.gep(dst, [self.c(half * TILE)], source_etype=F32)
                    masked_store_f32(b, self.m, b.fmul(x, inv), ptr, rem)


def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """The kernel body (``PARAMS``) for ``isa`` with the AMX-BF16 features."""
    if isa.lanes != LANES:
        raise ValueError(f"the tile attention kernel needs {LANES}-lane vectors, not {isa.name}'s {isa.lanes}")
    _Emitter(b).emit()
