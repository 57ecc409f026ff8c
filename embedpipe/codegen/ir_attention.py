"""IR of the tiled softmax attention kernel: packed sequences in one native call, never
holding a T×T matrix (``attention`` plans its work, checks its inputs and runs it).

Work is split into items of one sequence × one KV head × one tile of ``bq`` query positions;
the ``group`` query heads sharing that KV head ride along, so a tile has ``R = bq·group``
query rows (row ``r`` is position ``i0 + r // group``, head ``r mod group``).  Each thread
claims items with an atomic counter and runs them start to finish:

1. pack the tile's queries transposed, ``Qt[d][r]`` (zero rows pad ``R`` to the vector tile);
2. walk the keys the tile can see in tiles of ``KEY_TILE``: with a window ``hw`` that is
   ``[i0 − hw, i1 + hw)``, so tiles that are fully masked are never visited;

   * ``St[j][r] = K[j]·Qt[:, r]`` (MR keys × NV query vectors of FMA chains over ``d``),
   * online softmax down each query lane: running max ``m``, ``α = e^(m_old − m_new)``,
     ``P = e^(S − m_new)`` (masked keys and weights below e^-64 exactly 0), ``l = α·l + ΣP``,
   * ``O = α·O + Pᵀ·V`` (MR query rows × NV value vectors, a scalar tail for ragged ``dv``);
3. write ``O / l`` into the rows of the output.

Batch invariance: every number a query row gets depends only on its own sequence (tile grid
from position 0, the key range, the key-tile walk) and the ISA, never on what else is in the
batch, which thread runs the item or how many threads there are.
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen.ir_elementwise import emit_exp
from embedpipe.codegen.irutil import (
    F32,
    I1,
    I8,
    I32,
    I64,
    PTR,
    VOID,
    const_i64,
    elem_ptr,
    fmuladd,
    for_range,
    imin,
    intrinsic,
    load_elem,
    round_up,
    round_up_value,
    splat,
    store_elem,
    transpose_square,
    var,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

KEY_TILE = 64  # keys per step of the online softmax (a multiple of every MR and of NV·lanes)
NV = 2  # vectors per register tile
WORK_FIELDS = 4  # (sequence start row, sequence length, first query position, KV head)
_ALIGN = 16  # floats: scratch sections start on 64-byte lines


def tile_rows(isa: IsaSpec) -> int:
    """Rows of a register tile: MR rows × NV vectors of accumulators fit the register file."""
    return 8 if isa.lanes >= 16 else 4


def padded_rows(isa: IsaSpec, group: int, bq: int) -> int:
    return round_up(group * bq, NV * isa.lanes)


def scratch_floats(isa: IsaSpec, group: int, bq: int, d: int, dv: int) -> int:
    """Floats of one thread's scratch (Qt, St, O, m, l, α, positions), a whole number of
    64-byte lines."""
    rp = padded_rows(isa, group, bq)
    sections = (d * rp, KEY_TILE * rp, rp * dv, rp, rp, rp, rp)
    return sum(round_up(s, _ALIGN) for s in sections)


PARAMS = [
    ("q", PTR),
    ("k", PTR),
    ("v", PTR),
    ("out", PTR),
    ("work", PTR),
    ("n_work", I64),
    ("counter", PTR),
    ("scratch", PTR),
    ("group", I64),
    ("n_q", I64),
    ("n_kv", I64),
    ("d", I64),
    ("dv", I64),
    ("hw", I64),
    ("bq", I64),
]


def window(b: ir.IRBuilder, hw: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(whether there is a window — ``hw`` < 0: keys at any distance are visible —, the
    half-window as i32 for distance compares: ``hw`` capped, 2^30 without a window)."""
    windowed = b.icmp_signed(">=", hw, const_i64(0))
    big = const_i64(1 << 30)
    return windowed, b.trunc(b.select(windowed, imin(b, hw, big), big), I32)


def claim_items(b: ir.IRBuilder, counter: ir.Value, n_work: ir.Value, item) -> None:
    """``item(w)`` for every work index this thread claims from the shared ``counter`` (an
    atomic add per claim) while it is below ``n_work``."""
    one = ir.Constant(I64, 1)
    cur = var(b, I64, b.atomic_rmw("add", counter, one, "monotonic"))
    head = b.append_basic_block("item.head")
    body = b.append_basic_block("item.body")
    done = b.append_basic_block("item.done")
    b.branch(head)
    b.position_at_end(head)
    w = b.load(cur)
    b.cbranch(b.icmp_signed("<", w, n_work), body, done)
    b.position_at_end(body)
    item(w)
    b.store(b.atomic_rmw("add", counter, one, "monotonic"), cur)
    b.branch(head)
    b.position_at_end(done)


def item_bounds(
    b: ir.IRBuilder, work: ir.Value, w: ir.Value, bq: ir.Value, group: ir.Value, windowed: ir.Value, hw: ir.Value
) -> tuple[ir.Value, ...]:
    """Work item ``w``'s (sequence start, length t, first position i0, KV head h, end
    position i1, query rows, first and end key any of its rows sees)."""
    fields = [load_elem(b, I64, work, b.add(b.mul(w, const_i64(WORK_FIELDS)), const_i64(f))) for f in range(4)]
    a, t, i0, h = fields
    i1 = imin(b, t, b.add(i0, bq))
    rows = b.mul(b.sub(i1, i0), group)
    lo = b.select(windowed, b.sub(i0, hw), const_i64(0))
    lo = b.select(b.icmp_signed("<", lo, const_i64(0)), const_i64(0), lo)
    hi = b.select(windowed, imin(b, t, b.add(i1, hw)), t)
    return a, t, i0, h, i1, rows, lo, hi


def query_row(
    b: ir.IRBuilder, a: ir.Value, i0: ir.Value, h: ir.Value, group: ir.Value, n_q: ir.Value, r: ir.Value
) -> ir.Value:
    """Row (position · n_q + head) in q (S, n_q, d) of query row ``r`` of the item starting at
    position ``i0`` of the sequence at row ``a``, KV head ``h``: positions major, heads minor."""
    pos = b.add(b.add(a, i0), b.sdiv(r, group))
    head = b.add(b.mul(h, group), b.srem(r, group))
    return b.add(b.mul(pos, n_q), head)


class _Emitter:
    """Builds the kernel body; one method per stage of a work item."""

    def __init__(self, b: ir.IRBuilder, isa: IsaSpec) -> None:
        self.b, self.isa, self.m = b, isa, b.module
        self.lanes, self.mr = isa.lanes, tile_rows(isa)
        self.vt = vec(F32, self.lanes)
        self.it = vec(I32, self.lanes)
        (self.q, self.k, self.v, self.out, self.work, self.n_work, self.counter, self.scratch) = b.function.args[:8]
        (self.group, self.n_q, self.n_kv, self.d, self.dv, self.hw, self.bq) = b.function.args[8:]

    def c(self, x: int) -> ir.Constant:
        return const_i64(x)

    def fptr(self, base: ir.Value, idx: ir.Value) -> ir.Value:
        return elem_ptr(self.b, F32, base, idx)

    def round_up(self, x: ir.Value, m: int) -> ir.Value:
        return round_up_value(self.b, x, m)

    def emit(self) -> None:
        b = self.b
        lanes = self.lanes
        rp_max = self.round_up(b.mul(self.group, self.bq), NV * lanes)
        sizes = [b.mul(self.d, rp_max), b.mul(self.c(KEY_TILE), rp_max), b.mul(rp_max, self.dv)] + [rp_max] * 4
        ptrs, off = [], self.c(0)
        for size in sizes:
            ptrs.append(self.fptr(self.scratch, off))
            off = b.add(off, self.round_up(size, _ALIGN))
        self.qt, self.st, self.o, self.mx, self.l, self.alpha, self.pos = ptrs
        self.windowed, self.hw_mask = window(b, self.hw)
        claim_items(b, self.counter, self.n_work, self.item)
        b.ret_void()

    def item(self, w: ir.Value) -> None:
        b = self.b
        self.a, self.t, self.i0, self.h, self.i1, self.rows, lo, hi = item_bounds(
            b, self.work, w, self.bq, self.group, self.windowed, self.hw
        )
        self.rp = self.round_up(self.rows, NV * self.lanes)
        self.pack_queries()
        with for_range(b, lo, hi, KEY_TILE, "ktile") as j0:
            n = imin(b, self.c(KEY_TILE), b.sub(hi, j0))
            self.scores(j0, n)
            self.softmax(j0, n)
            self.accumulate(j0, n)
        self.write_out()

    def q_row(self, r: ir.Value) -> ir.Value:
        return query_row(self.b, self.a, self.i0, self.h, self.group, self.n_q, r)

    def pack_queries(self) -> None:
        """Reset m, l and O; Qt[d][r] = q row r (zero past the tile's rows), transposed
        ``lanes`` × ``lanes`` at a time in registers, a scalar tail for ragged ``d``."""
        b, lanes, vt = self.b, self.lanes, self.vt
        neg_inf = ir.Constant(F32, float("-inf"))
        with for_range(b, self.c(0), self.rp, 1, "qrow") as r:
            store_elem(b, F32, self.mx, r, neg_inf)
            store_elem(b, F32, self.l, r, ir.Constant(F32, 0.0))
            store_elem(b, I32, self.pos, r, b.trunc(b.add(self.i0, b.sdiv(r, self.group)), I32))
        memset = intrinsic(self.m, "llvm.memset.p0.i64", VOID, [PTR, I8, I64, I1])
        nbytes = b.mul(b.mul(self.rp, self.dv), self.c(4))
        b.call(memset, [self.o, ir.Constant(I8, 0), nbytes, ir.Constant(I1, 0)])
        d_vec = b.mul(b.sdiv(self.d, self.c(lanes)), self.c(lanes))
        last = b.sub(self.rows, self.c(1))
        with for_range(b, self.c(0), self.rp, lanes, "qblk") as rb:
            rows = [b.add(rb, self.c(i)) for i in range(lanes)]
            real = [b.icmp_signed("<", r, self.rows) for r in rows]
            src = [self.fptr(self.q, b.mul(self.q_row(imin(b, r, last)), self.d)) for r in rows]
            with for_range(b, self.c(0), d_vec, lanes, "qd") as db:
                vs = [
                    b.select(real[i], b.load(self.fptr(src[i], db), typ=vt, align=4), ir.Constant(vt, None))
                    for i in range(lanes)
                ]
                for c, col in enumerate(transpose_square(b, vs)):
                    b.store(col, self.fptr(self.qt, b.add(b.mul(b.add(db, self.c(c)), self.rp), rb)), align=4)
            with for_range(b, d_vec, self.d, 1, "qdt") as dd:
                for i in range(lanes):
                    x = b.select(real[i], load_elem(b, F32, src[i], dd), ir.Constant(F32, 0.0))
                    store_elem(b, F32, self.qt, b.add(b.mul(dd, self.rp), rows[i]), x)

    def fma_tile(
        self,
        a_rows: list[ir.Value],
        a_step: ir.Value,
        bp: ir.Value,
        b_step: ir.Value,
        kdim: ir.Value,
        c_rows: list[ir.Value],
        scales: list[ir.Value] | None,
    ) -> None:
        """``C[r, 0:NV·lanes] = (C[r]·scale[r] | 0) + Σ_p A[r, p]·B[p, 0:NV·lanes]``.

        ``a_rows[r]`` points at A[r, 0] (A[r, p] is ``p·a_step`` floats further), B[p, 0] is
        ``bp + p·b_step``, ``c_rows[r]`` points at C[r, 0]; ``scales`` None starts from 0.
        """
        b, vt, lanes = self.b, self.vt, self.lanes
        accs = []
        for r, crow in enumerate(c_rows):
            row = []
            for v in range(NV):
                if scales is None:
                    init = ir.Constant(vt, None)
                else:
                    init = b.fmul(
                        b.load(self.fptr(crow, self.c(v * lanes)), typ=vt, align=4), splat(b, scales[r], lanes)
                    )
                row.append(var(b, vt, init))
            accs.append(row)
        with for_range(b, self.c(0), kdim, 1, "p") as p:
            brow = self.fptr(bp, b.mul(p, b_step))
            bv = [b.load(self.fptr(brow, self.c(v * lanes)), typ=vt, align=4) for v in range(NV)]
            for r, arow in enumerate(a_rows):
                av = splat(b, b.load(self.fptr(arow, b.mul(p, a_step)), typ=F32), lanes)
                for v in range(NV):
                    b.store(fmuladd(b, self.m, av, bv[v], b.load(accs[r][v])), accs[r][v])
        for crow, row in zip(c_rows, accs):
            for v in range(NV):
                b.store(b.load(row[v]), self.fptr(crow, self.c(v * lanes)), align=4)

    def kv_row(self, j: ir.Value) -> ir.Value:
        """Row index (token · n_kv + head) of key/value ``j`` of the sequence."""
        b = self.b
        return b.add(b.mul(b.add(self.a, j), self.n_kv), self.h)

    def scores(self, j0: ir.Value, n: ir.Value) -> None:
        """St[j][r] for keys j0..j0+n; key rows past n re-read key n−1 (never used)."""
        b, mr = self.b, self.mr
        with for_range(b, self.c(0), self.rp, NV * self.lanes, "scol") as cb:
            with for_range(b, self.c(0), n, mr, "skey") as kb:
                a_rows, c_rows = [], []
                for rr in range(mr):
                    j = imin(b, b.add(kb, self.c(rr)), b.sub(n, self.c(1)))
                    a_rows.append(self.fptr(self.k, b.mul(self.kv_row(b.add(j0, j)), self.d)))
                    c_rows.append(self.fptr(self.st, b.add(b.mul(b.add(kb, self.c(rr)), self.rp), cb)))
                self.fma_tile(a_rows, self.c(1), self.fptr(self.qt, cb), self.rp, self.d, c_rows, None)

    def softmax(self, j0: ir.Value, n: ir.Value) -> None:
        """Online softmax of the tile's scores down each query lane; St becomes P."""
        b, vt, lanes = self.b, self.vt, self.lanes
        neg_inf = ir.Constant(vt, [float("-inf")] * lanes)
        zero = ir.Constant(vt, None)
        # weights below e^-64 of the row's max become exactly 0: they cannot move an fp32 sum,
        # and their products with V would be denormals (a microcode assist per FMA on x86)
        underflow = ir.Constant(vt, [-64.0] * lanes)
        hw_pos = splat(b, self.hw_mask, lanes)
        hw_neg = b.neg(hw_pos)
        with for_range(b, self.c(0), self.rp, lanes, "srow") as rv:
            posv = b.load(elem_ptr(b, I32, self.pos, rv), typ=self.it, align=4)

            def visible(j: ir.Value) -> ir.Value:
                dist = b.sub(posv, splat(b, b.trunc(b.add(j0, j), I32), lanes))
                return b.and_(b.icmp_signed("<=", dist, hw_pos), b.icmp_signed(">=", dist, hw_neg))

            def st_at(j: ir.Value) -> ir.Value:
                return self.fptr(self.st, b.add(b.mul(j, self.rp), rv))

            mt = var(b, vt, neg_inf)
            with for_range(b, self.c(0), n, 1, "smax") as j:
                s = b.select(visible(j), b.load(st_at(j), typ=vt, align=4), neg_inf)
                cur = b.load(mt)
                b.store(b.select(b.fcmp_ordered(">", s, cur), s, cur), mt)
            m_old = b.load(self.fptr(self.mx, rv), typ=vt, align=4)
            tile_max = b.load(mt)
            m_new = b.select(b.fcmp_ordered(">", tile_max, m_old), tile_max, m_old)
            none_yet = b.fcmp_ordered("==", m_new, neg_inf)
            shrink = b.fsub(m_old, m_new)
            alpha = b.select(
                b.fcmp_ordered("<", shrink, underflow), zero, emit_exp(b, self.m, shrink, nonpositive=True)
            )
            alpha = b.select(none_yet, ir.Constant(vt, [1.0] * lanes), alpha)
            total = var(b, vt, zero)
            with for_range(b, self.c(0), n, 1, "sexp") as j:
                diff = b.fsub(b.load(st_at(j), typ=vt, align=4), m_new)
                ok = b.and_(visible(j), b.fcmp_ordered(">=", diff, underflow))
                p = b.select(ok, emit_exp(b, self.m, diff, nonpositive=True), zero)
                b.store(p, st_at(j), align=4)
                b.store(b.fadd(b.load(total), p), total)
            l_old = b.load(self.fptr(self.l, rv), typ=vt, align=4)
            b.store(b.fadd(b.fmul(l_old, alpha), b.load(total)), self.fptr(self.l, rv), align=4)
            b.store(m_new, self.fptr(self.mx, rv), align=4)
            b.store(alpha, self.fptr(self.alpha, rv), align=4)

    def accumulate(self, j0: ir.Value, n: ir.Value) -> None:
        """O = α·O + P·V over the tile's n keys (vector tiles, then a scalar tail of dv)."""
        b, mr, lanes = self.b, self.mr, self.lanes
        width = NV * lanes
        vec_end = b.mul(b.sdiv(self.dv, self.c(width)), self.c(width))
        v_step = b.mul(self.n_kv, self.dv)
        v0 = self.fptr(self.v, b.mul(self.kv_row(j0), self.dv))
        with for_range(b, self.c(0), vec_end, width, "vcol") as cb:
            with for_range(b, self.c(0), self.rp, mr, "vrow") as rb:
                rows = [b.add(rb, self.c(rr)) for rr in range(mr)]
                a_rows = [self.fptr(self.st, r) for r in rows]
                c_rows = [self.fptr(self.o, b.add(b.mul(r, self.dv), cb)) for r in rows]
                scales = [load_elem(b, F32, self.alpha, r) for r in rows]
                self.fma_tile(a_rows, self.rp, self.fptr(v0, cb), v_step, n, c_rows, scales)
        with for_range(b, vec_end, self.dv, 1, "vtail") as c:
            with for_range(b, self.c(0), self.rp, 1, "vtrow") as r:
                at = self.fptr(self.o, b.add(b.mul(r, self.dv), c))
                acc = var(b, F32, b.fmul(b.load(at, typ=F32), load_elem(b, F32, self.alpha, r)))
                with for_range(b, self.c(0), n, 1, "vtkey") as j:
                    p = load_elem(b, F32, self.st, b.add(b.mul(j, self.rp), r))
                    x = load_elem(b, F32, v0, b.add(b.mul(j, v_step), c))
                    b.store(b.fadd(b.fmul(p, x), b.load(acc)), acc)
                b.store(b.load(acc), at)

    def write_out(self) -> None:
        b, lanes, vt = self.b, self.lanes, self.vt
        vec_end = b.mul(b.sdiv(self.dv, self.c(lanes)), self.c(lanes))
        with for_range(b, self.c(0), self.rows, 1, "orow") as r:
            inv = b.fdiv(ir.Constant(F32, 1.0), load_elem(b, F32, self.l, r))
            dst = self.fptr(self.out, b.mul(self.q_row(r), self.dv))
            src = self.fptr(self.o, b.mul(r, self.dv))
            inv_v = splat(b, inv, lanes)
            with for_range(b, self.c(0), vec_end, lanes, "ovec") as c:
                x = b.load(self.fptr(src, c), typ=vt, align=4)
                b.store(b.fmul(x, inv_v), self.fptr(dst, c), align=4)
            with for_range(b, vec_end, self.dv, 1, "otail") as c:
                b.store(b.fmul(load_elem(b, F32, src, c), inv), self.fptr(dst, c))


def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """The kernel body (``PARAMS``) for ``isa``."""
    _Emitter(b, isa).emit()
