"""Shared IR of the HNSW build kernels: the context and scratch word layouts, structured-code
helpers and the internal functions both kernels call.

`BuildEmitter` emits, once per LLVM module and element type (fp32 rows or int8 codes):

* ``weights`` — a stored node expanded into float query weights (int8: ``S ⊙ x`` and ``O · x``);
* ``push`` — insertion into a bounded candidate pool sorted by descending score;
* ``select`` — the paper's neighbour-selection heuristic over a sorted pool;
* ``search`` — ``search_layer``: best-first search of one layer with a visited tag per worker;

plus the inline accessors (context words, a node's list on a layer, similarity of a stored row
to an expanded node, row prefetch). The kernels that drive them are in `hnsw_insert_kernel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import F32, I8, I32, I64, PTR, const_i64, intrinsic, loop, var
from embedpipe.codegen.rowdot import emit_dot

# Words of the shared context array (int64), in order; pointers are addresses.
CTX = (
    "X",
    "R",
    "S",
    "O",
    "d",
    "n",
    "level",
    "upoff",
    "nbr0",
    "m0",
    "nbru",
    "mu",
    "entry",
    "maxlevel",
    "efc",
    "m",
    "nodes",
    "nbatch",
    "fwd",
    "fwdoff",
    "gnode",
    "glevel",
    "gstart",
    "incoming",
    "ngroups",
    "next",
)
# Words of one worker's scratch array: buffers it alone uses, and its visited tag.
SCRATCH = ("visited", "tag", "pool_id", "pool_s", "pool_x", "qbuf", "cbuf")
ELEMENTS = {"fp32": F32, "int8": I8}
PREFETCH_LINES = 2  # cache lines of each neighbour's row requested before scoring them
PARAMS = [("ctx", PTR), ("scr", PTR), ("lo", I64), ("hi", I64)]


class Fn:
    """Structured code over the codegen helpers: ``loop(cond, body(exit, head))`` is a
    ``while (cond)`` whose body may branch to ``exit`` (break) or ``head`` (continue)."""

    def __init__(self, b: ir.IRBuilder) -> None:
        self.b = b

    def var(self, ty: ir.Type, init: ir.Value) -> ir.Value:
        return var(self.b, ty, init)

    def get(self, slot: ir.Value) -> ir.Value:
        return self.b.load(slot)

    def put(self, slot: ir.Value, v: ir.Value) -> None:
        self.b.store(v, slot)

    def loop(self, cond: Callable[[], ir.Value], body: Callable[[ir.Block, ir.Block], None]) -> None:
        with loop(self.b, "w") as lp:
            lp.break_unless(cond())
            body(lp.exit, lp.head)


class BuildEmitter:
    """Emits the internal helpers of one element type into `module` (once each) and the
    accessors the kernels use; kernel emitters subclass it."""

    def __init__(self, module: ir.Module, elt: ir.Type, lanes: int) -> None:
        self.m, self.elt = module, elt
        self.dot = emit_dot(module, elt, lanes)
        self.pf = intrinsic(module, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.memmove = intrinsic(module, "llvm.memmove.p0.p0.i64", ir.VoidType(), [PTR, PTR, I64, ir.IntType(1)])
        self.weights = self._once("ep_hb_weights", self._weights)
        self.push = self._once("ep_hb_push", self._push)
        self.select = self._once("ep_hb_select", self._select)
        self.search = self._once("ep_hb_search", self._search_layer)

    def _once(self, name: str, emit: Callable[[], ir.Function]) -> ir.Function:
        """The module's helper `name`, emitted by the first kernel that needs it."""
        try:
            return self.m.get_global(name)
        except KeyError:
            return emit()

    # --- plumbing -------------------------------------------------------------------------
    def _fn(
        self, name: str, ret: ir.Type, args: list[tuple[str, ir.Type]]
    ) -> tuple[ir.Function, ir.IRBuilder, Fn, dict[str, ir.Value]]:
        fn = ir.Function(self.m, ir.FunctionType(ret, [t for _, t in args]), name=name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg, (n, _) in zip(fn.args, args):
            arg.name = n
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        return fn, b, Fn(b), {n: a for (n, _), a in zip(args, fn.args)}

    @staticmethod
    def word(b: ir.IRBuilder, base: ir.Value, table: tuple[str, ...], name: str) -> ir.Value:
        return b.load(b.gep(base, [const_i64(table.index(name))], source_etype=I64), typ=I64)

    def ctx(self, b: ir.IRBuilder, ctx: ir.Value, name: str, ptr: bool = False) -> ir.Value:
        v = self.word(b, ctx, CTX, name)
        return b.inttoptr(v, PTR) if ptr else v

    def scr(self, b: ir.IRBuilder, scr: ir.Value, name: str, ptr: bool = True) -> ir.Value:
        v = self.word(b, scr, SCRATCH, name)
        return b.inttoptr(v, PTR) if ptr else v

    def claim(self, b: ir.IRBuilder, ctx: ir.Value) -> ir.Value:
        """The next unclaimed item of this call (an atomic counter in the context): workers
        take items one at a time, so a slow or descheduled worker holds up only its own."""
        slot = b.gep(ctx, [const_i64(CTX.index("next"))], source_etype=I64)
        return b.atomic_rmw("add", slot, const_i64(1), "monotonic")

    @staticmethod
    def ld(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, idx: ir.Value) -> ir.Value:
        return b.load(b.gep(base, [idx], source_etype=ty), typ=ty)

    @staticmethod
    def st(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, idx: ir.Value, v: ir.Value) -> None:
        b.store(v, b.gep(base, [idx], source_etype=ty))

    def sim(self, b: ir.IRBuilder, ctx: ir.Value, buf: ir.Value, const: ir.Value, v: ir.Value) -> ir.Value:
        """Similarity of stored row v to the node expanded into (buf, const)."""
        s = b.call(self.dot, [self.ctx(b, ctx, "X", True), self.ctx(b, ctx, "R", True), self.ctx(b, ctx, "d"), buf, v])
        return b.fadd(s, const)

    def prefetch_row(self, b: ir.IRBuilder, ctx: ir.Value, v: ir.Value) -> None:
        """Ask for the first cache lines of row v before it is scored."""
        width = 4 if self.elt is F32 else 1
        row = b.gep(self.ctx(b, ctx, "X", True), [b.mul(v, self.ctx(b, ctx, "d"))], source_etype=self.elt)
        for line in range(PREFETCH_LINES):
            b.call(
                self.pf,
                [
                    b.gep(row, [const_i64(64 * line // width)], source_etype=self.elt),
                    ir.Constant(I32, 0),
                    ir.Constant(I32, 3),
                    ir.Constant(I32, 1),
                ],
            )

    def expand(self, b: ir.IRBuilder, ctx: ir.Value, v: ir.Value, buf: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Node v as a query: (weights pointer, constant). fp32 rows are their own weights."""
        if self.elt is F32:
            row = b.gep(self.ctx(b, ctx, "X", True), [b.mul(v, self.ctx(b, ctx, "d"))], source_etype=F32)
            return row, ir.Constant(F32, 0.0)
        return buf, b.call(self.weights, [ctx, v, buf])

    def row(self, b: ir.IRBuilder, ctx: ir.Value, v: ir.Value, layer: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(pointer to node v's neighbour list on `layer`, its capacity)."""
        zero = const_i64(0)
        on0 = b.icmp_signed("==", layer, zero)
        m0, mu = self.ctx(b, ctx, "m0"), self.ctx(b, ctx, "mu")
        up = self.ld(b, I64, self.ctx(b, ctx, "upoff", True), v)
        r0 = b.gep(self.ctx(b, ctx, "nbr0", True), [b.mul(v, m0)], source_etype=I32)
        ru = b.gep(self.ctx(b, ctx, "nbru", True), [b.mul(b.add(up, b.sub(layer, const_i64(1))), mu)], source_etype=I32)
        return b.select(on0, r0, ru), b.select(on0, m0, mu)

    # --- helpers --------------------------------------------------------------------------
    def _weights(self) -> ir.Function:
        """float weights(ctx, v, buf): buf = S ⊙ x_v; returns O · x_v (0 for fp32)."""
        fn, b, f, a = self._fn("ep_hb_weights", F32, [("ctx", PTR), ("v", I64), ("buf", PTR)])
        ctx = a["ctx"]
        d = self.ctx(b, ctx, "d")
        base = b.gep(self.ctx(b, ctx, "X", True), [b.mul(a["v"], d)], source_etype=self.elt)
        acc = f.var(F32, ir.Constant(F32, 0.0))
        j = f.var(I64, const_i64(0))
        if self.elt is F32:
            rv = S = off = None
        else:
            rv = self.ld(b, F32, self.ctx(b, ctx, "R", True), a["v"])
            S, off = self.ctx(b, ctx, "S", True), self.ctx(b, ctx, "O", True)

        def body(out: ir.Block, head: ir.Block) -> None:
            jj = f.get(j)
            x = self.ld(b, self.elt, base, jj)
            if self.elt is F32:
                self.st(b, F32, a["buf"], jj, x)
            else:
                s = self.ld(b, F32, S, jj)
                xf = b.fadd(b.fmul(b.fmul(b.sitofp(x, F32), s), rv), self.ld(b, F32, off, jj))
                self.st(b, F32, a["buf"], jj, b.fmul(s, xf))
                f.put(acc, b.fadd(f.get(acc), b.fmul(self.ld(b, F32, off, jj), xf)))
            f.put(j, b.add(jj, const_i64(1)))

        f.loop(lambda: b.icmp_signed("<", f.get(j), d), body)
        b.ret(f.get(acc))
        return fn

    def _push(self) -> ir.Function:
        """i64 push(pid, ps, px, size*, cap, s, id): insert into the pool sorted by descending
        score (after equal scores); returns the slot, or -1 when the pool is full and s is no
        better than its worst. The slot is found by binary search and the tail moved with
        memmove (a pool of ef_construction entries takes many pushes per search)."""
        fn, b, f, a = self._fn(
            "ep_hb_push",
            I64,
            [("pid", PTR), ("ps", PTR), ("px", PTR), ("size", PTR), ("cap", I64), ("s", F32), ("id", I64)],
        )
        one = const_i64(1)
        n = b.load(a["size"], typ=I64)
        full = b.icmp_signed(">=", n, a["cap"])
        with b.if_then(full):
            worst = self.ld(b, F32, a["ps"], b.sub(n, one))
            with b.if_then(b.fcmp_ordered("<=", a["s"], worst)):
                b.ret(const_i64(-1))
        lo, hi = f.var(I64, const_i64(0)), f.var(I64, n)

        def halve(out: ir.Block, head: ir.Block) -> None:
            mid = b.ashr(b.add(f.get(lo), f.get(hi)), one)
            after = b.fcmp_ordered(">=", self.ld(b, F32, a["ps"], mid), a["s"])
            f.put(lo, b.select(after, b.add(mid, one), f.get(lo)))
            f.put(hi, b.select(after, f.get(hi), mid))

        f.loop(lambda: b.icmp_signed("<", f.get(lo), f.get(hi)), halve)
        pp = f.get(lo)
        moved = b.sub(b.select(full, b.sub(n, one), n), pp)
        for arr, ty, width in ((a["ps"], F32, 4), (a["pid"], I32, 4), (a["px"], I8, 1)):
            src = b.gep(arr, [pp], source_etype=ty)
            dst = b.gep(arr, [b.add(pp, one)], source_etype=ty)
            b.call(self.memmove, [dst, src, b.mul(moved, const_i64(width)), ir.Constant(ir.IntType(1), 0)])
        self.st(b, F32, a["ps"], pp, a["s"])
        self.st(b, I32, a["pid"], pp, b.trunc(a["id"], I32))
        self.st(b, I8, a["px"], pp, ir.Constant(I8, 0))
        b.store(b.select(full, n, b.add(n, one)), a["size"])
        b.ret(pp)
        return fn

    def _select(self) -> ir.Function:
        """i64 select(ctx, cid, cs, count, m, out, cbuf): the heuristic over candidates sorted
        by descending score: keep c while fewer than m are kept and c is closer to the node
        than to every kept one; a tie with a kept one of c's own score (an exact copy) counts as
        closer once `copy_cap(m)` of that score are kept (the twin's `_keeps` says why). Writes
        the kept ids to out[0..kept), returns kept."""
        fn, b, f, a = self._fn(
            "ep_hb_select",
            I64,
            [("ctx", PTR), ("cid", PTR), ("cs", PTR), ("count", I64), ("m", I64), ("out", PTR), ("cbuf", PTR)],
        )
        one, zero = const_i64(1), const_i64(0)
        j, kept, r, ok, run_start = (f.var(I64, zero) for _ in range(5))
        run_score = f.var(F32, ir.Constant(F32, float("nan")))
        cap = b.select(b.icmp_signed(">", a["m"], const_i64(1)), b.sdiv(a["m"], const_i64(2)), one)  # copy_cap

        def each(out: ir.Block, head: ir.Block) -> None:
            jj = f.get(j)
            f.put(j, b.add(jj, one))
            c = b.sext(self.ld(b, I32, a["cid"], jj), I64)
            sc = self.ld(b, F32, a["cs"], jj)
            with b.if_then(b.fcmp_unordered("!=", sc, f.get(run_score))):  # out[run_start:] share c's score
                f.put(run_score, sc)
                f.put(run_start, f.get(kept))
            f.put(ok, one)
            f.put(r, zero)
            rs = f.get(run_start)
            run_full = b.icmp_signed(">=", b.sub(f.get(kept), rs), cap)
            with b.if_then(b.icmp_signed(">", f.get(kept), zero)):
                cw, cc = self.expand(b, a["ctx"], c, a["cbuf"])

                def check(out2: ir.Block, head2: ir.Block) -> None:
                    rr = f.get(r)
                    f.put(r, b.add(rr, one))
                    kr = b.sext(self.ld(b, I32, a["out"], rr), I64)
                    to_kept = self.sim(b, a["ctx"], cw, cc, kr)
                    copy = b.and_(b.fcmp_ordered("==", to_kept, sc), b.and_(run_full, b.icmp_signed(">=", rr, rs)))
                    with b.if_then(b.or_(b.fcmp_ordered(">", to_kept, sc), copy)):
                        f.put(ok, zero)
                        b.branch(out2)

                f.loop(lambda: b.icmp_signed("<", f.get(r), f.get(kept)), check)
            with b.if_then(b.icmp_signed("!=", f.get(ok), zero)):
                self.st(b, I32, a["out"], f.get(kept), b.trunc(c, I32))
                f.put(kept, b.add(f.get(kept), one))

        f.loop(lambda: b.and_(b.icmp_signed("<", f.get(j), a["count"]), b.icmp_signed("<", f.get(kept), a["m"])), each)
        b.ret(f.get(kept))
        return fn

    def _search_layer(self) -> ir.Function:
        """i64 search(ctx, scr, layer, start, ef, buf, const): best-first search on one layer
        from `start` into the scratch pool (sorted, ≤ ef); returns the pool size. The pool
        flags each entry expanded or not and the search expands the best unexpanded entry
        until none is left (hnswlib's stopping rule)."""
        fn, b, f, a = self._fn(
            "ep_hb_search",
            I64,
            [("ctx", PTR), ("scr", PTR), ("layer", I64), ("start", I64), ("ef", I64), ("buf", PTR), ("const", F32)],
        )
        one, zero = const_i64(1), const_i64(0)
        ctx, scr = a["ctx"], a["scr"]
        visited = self.scr(b, scr, "visited")
        pid, ps, px = (self.scr(b, scr, k) for k in ("pool_id", "pool_s", "pool_x"))
        tag_slot = b.gep(scr, [const_i64(SCRATCH.index("tag"))], source_etype=I64)
        tag = b.add(b.load(tag_slot, typ=I64), one)
        with b.if_then(b.icmp_signed(">=", tag, const_i64(2**31 - 1))):
            n = self.ctx(b, ctx, "n")
            i = f.var(I64, zero)

            def clear(out: ir.Block, head: ir.Block) -> None:
                self.st(b, I32, visited, f.get(i), ir.Constant(I32, 0))
                f.put(i, b.add(f.get(i), one))

            f.loop(lambda: b.icmp_signed("<", f.get(i), n), clear)
        tag = b.select(b.icmp_signed(">=", tag, const_i64(2**31 - 1)), one, tag)
        b.store(tag, tag_slot)
        tag32 = b.trunc(tag, I32)
        size = f.var(I64, zero)
        self.st(b, I32, visited, a["start"], tag32)
        b.call(self.push, [pid, ps, px, size, a["ef"], self.sim(b, ctx, a["buf"], a["const"], a["start"]), a["start"]])
        k, nk, j = (f.var(I64, zero) for _ in range(3))

        def expand(out: ir.Block, head: ir.Block) -> None:
            kk = f.get(k)
            with b.if_then(b.icmp_signed("!=", self.ld(b, I8, px, kk), ir.Constant(I8, 0))):
                f.put(k, b.add(kk, one))
                b.branch(head)
            self.st(b, I8, px, kk, ir.Constant(I8, 1))
            u = b.sext(self.ld(b, I32, pid, kk), I64)
            f.put(nk, f.get(size))
            f.put(j, zero)
            base, width = self.row(b, ctx, u, a["layer"])

            def prefetch(out2: ir.Block, head2: ir.Block) -> None:
                jj = f.get(j)
                f.put(j, b.add(jj, one))
                v = b.sext(self.ld(b, I32, base, jj), I64)
                with b.if_then(b.icmp_signed("<", v, zero)):
                    b.branch(out2)
                self.prefetch_row(b, ctx, v)

            f.loop(lambda: b.icmp_signed("<", f.get(j), width), prefetch)
            f.put(j, zero)

            def neighbour(out2: ir.Block, head2: ir.Block) -> None:
                jj = f.get(j)
                f.put(j, b.add(jj, one))
                v = b.sext(self.ld(b, I32, base, jj), I64)
                with b.if_then(b.icmp_signed("<", v, zero)):
                    b.branch(out2)
                with b.if_then(b.icmp_signed("==", self.ld(b, I32, visited, v), tag32)):
                    b.branch(head2)
                self.st(b, I32, visited, v, tag32)
                p = b.call(self.push, [pid, ps, px, size, a["ef"], self.sim(b, ctx, a["buf"], a["const"], v), v])
                with b.if_then(b.and_(b.icmp_signed(">=", p, zero), b.icmp_signed("<", p, f.get(nk)))):
                    f.put(nk, p)

            f.loop(lambda: b.icmp_signed("<", f.get(j), width), neighbour)
            kk = f.get(k)
            f.put(k, b.select(b.icmp_signed("<=", f.get(nk), kk), f.get(nk), b.add(kk, one)))

        f.loop(lambda: b.icmp_signed("<", f.get(k), f.get(size)), expand)
        b.ret(f.get(size))
        return fn


def pack(names: tuple[str, ...], values: dict[str, Any]) -> np.ndarray:
    """An int64 word array in the order of `names`: arrays become their addresses."""
    out = np.zeros(len(names), np.int64)
    for k, name in enumerate(names):
        v = values.get(name, 0)
        out[k] = v.ctypes.data if isinstance(v, np.ndarray) else int(v)
    return out
