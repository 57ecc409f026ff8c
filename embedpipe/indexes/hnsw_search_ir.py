"""IR of HNSW search as a native kernel (``hnsw_kernel`` drives it), for HNSW's graph layout:
greedy descent, then a layer-0 beam.

Layer 0 keeps a pool of the best `ef` nodes sorted by similarity, each flagged expanded or not;
the search expands the best unexpanded node until none is left — the same stopping rule as
hnswlib's candidate/result heaps. A per-slot `visited` array of u32 tags (bumped per query)
avoids clearing. Distances are fused multiply-adds over fp32 or int8 rows (int8 × per-row
scale). One kernel call searches a range of queries. Every neighbour id and upper-layer row the
search follows is checked in the kernel against the graph's bounds (a ``Fault`` in ``status``),
on top of the driver's validation of the file. Insertion (search_layer + neighbour selection
while building) lives in `hnsw_insert_kernel` and `hnsw_build_ir`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llvmlite.ir as ir

from embedpipe.codegen.irutil import (
    F32,
    I8,
    I32,
    I64,
    PTR,
    VOID,
    Loop,
    bump,
    const_i64,
    elem_ptr,
    for_range,
    imin,
    insert_sorted,
    intrinsic,
    load_elem,
    loop,
    store_elem,
    var,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.rowdot import emit_dot

PREFETCH_LINES = 2  # cache lines of each neighbour's row requested before scoring them
ONE, ZERO = const_i64(1), const_i64(0)
_GRAPH = [
    ("n", I64),
    ("X", PTR),
    ("scale", PTR),
    ("d", I64),
    ("nbr0", PTR),
    ("m0", I64),
    ("upoff", PTR),
    ("nbru", PTR),
    ("rows", I64),
    ("mu", I64),
    ("entry", I64),
    ("maxlevel", I64),
]
_SCRATCH = [
    ("ef", I64),
    ("visited", PTR),
    ("tag", I32),
    ("pool_id", PTR),
    ("pool_s", PTR),
    ("pool_x", PTR),
    ("fresh", PTR),
]
PARAMS = [*_GRAPH, ("Q", PTR), ("nq", I64), ("k", I64), ("s_out", PTR), ("r_out", PTR), *_SCRATCH, ("status", PTR)]
MAX_LEVEL = 63  # as `validate.MAX_LEVEL`: a deeper descent is a corrupt graph, not a search


class Fault(enum.IntEnum):
    """Why a kernel call stopped early (written to its ``status`` word; 0 = finished)."""

    START = 1  # entry point, top level, ef or k out of range
    NEIGHBOUR = 2  # a neighbour id >= n or < -1
    UPPER_ROW = 3  # an upper-layer row outside nbru


def stop(b: ir.IRBuilder, status: ir.Value, fault: Fault) -> None:
    """Write ``fault`` to ``*status`` and return from the kernel."""
    store_elem(b, I64, status, ZERO, const_i64(int(fault)))
    b.ret_void()


def stop_if(b: ir.IRBuilder, cond: ir.Value, status: ir.Value, fault: Fault) -> None:
    """A bounds check: when ``cond`` holds, `stop`."""
    with b.if_then(cond, likely=False):
        stop(b, status, fault)


class _Search:
    """Emits the search of one query; ``a`` maps parameter names to IR values."""

    def __init__(self, b: ir.IRBuilder, a: dict[str, ir.Value], elt: ir.Type, lanes: int) -> None:
        self.b, self.a, self.elt = b, a, elt
        self.dot = emit_dot(b.module, elt, lanes)

    def sim(self, node: ir.Value) -> ir.Value:
        a = self.a
        return self.b.call(self.dot, [a["X"], a["scale"], a["d"], a["q"], node])

    def ld(self, ty: ir.Type, name: str, idx: ir.Value) -> ir.Value:
        return load_elem(self.b, ty, self.a[name], idx)

    def st(self, ty: ir.Type, name: str, idx: ir.Value, v: ir.Value) -> None:
        store_elem(self.b, ty, self.a[name], idx, v)

    def descend(self) -> tuple[ir.Value, ir.Value]:
        """Greedy hops through layers maxlevel .. 1; returns (node, similarity) slots."""
        b, a = self.b, self.a
        cur, cur_s = var(b, I64, a["entry"]), var(b, F32, self.sim(a["entry"]))
        layer, changed = var(b, I64, a["maxlevel"]), var(b, I64, ZERO)
        with loop(b, "layer") as lay:
            lay.break_unless(b.icmp_signed(">", b.load(layer), ZERO))
            b.store(ONE, changed)
            with loop(b, "hop") as hop:
                hop.break_if(b.icmp_signed("==", b.load(changed), ZERO))
                b.store(ZERO, changed)
                row = b.add(self.ld(I64, "upoff", b.load(cur)), b.sub(b.load(layer), ONE))
                bad_row = b.icmp_unsigned(">=", row, a["rows"])  # fault noted, hop ends; no return in a loop
                with b.if_then(bad_row, likely=False):
                    store_elem(b, I64, a["status"], ZERO, const_i64(int(Fault.UPPER_ROW)))
                hop.break_if(bad_row)
                with self.links("nbru", "mu", row) as (_, nb):
                    s = self.sim(nb)
                    with b.if_then(b.fcmp_ordered(">", s, b.load(cur_s))):
                        b.store(s, cur_s)
                        b.store(nb, cur)
                        b.store(ONE, changed)
            b.store(b.sub(b.load(layer), ONE), layer)
        return cur, cur_s

    @contextmanager
    def links(self, lists: str, width: str, row: ir.Value) -> Iterator[tuple[Loop, ir.Value]]:
        """``with self.links(lists, width, row) as (scan, nb)``: the ids of one -1 padded
        neighbour list (row ``row`` of ``lists``), up to its first -1. The bounds
        check rides on the end-of-list test: one unsigned compare ``nb < n`` on the hot path."""
        b, a = self.b, self.a
        base = b.mul(row, a[width])
        j = var(b, I64, ZERO)
        with loop(b, "links") as scan:
            scan.break_unless(b.icmp_signed("<", b.load(j), a[width]))
            nb = b.sext(self.ld(I32, lists, b.add(base, bump(b, j))), I64)
            with b.if_then(b.icmp_unsigned(">=", nb, a["n"]), likely=False):
                # a bad id ends the list unread and leaves its fault for Python to raise: a
                # loop exit instead of a return keeps the hot loop as it was without checks
                with b.if_then(b.icmp_signed("!=", nb, const_i64(-1))):
                    store_elem(b, I64, a["status"], ZERO, const_i64(int(Fault.NEIGHBOUR)))
                scan.break_if(ir.Constant(ir.IntType(1), 1))
            yield scan, nb

    def prefetch(self, node: ir.Value) -> None:
        """Ask for the first `PREFETCH_LINES` cache lines of a node's row."""
        b = self.b
        pf = intrinsic(b.module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
        rowp = elem_ptr(b, self.elt, self.a["X"], b.mul(node, self.a["d"]))
        for line in range(PREFETCH_LINES):
            hint = [ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)]  # read, keep, data
            b.call(pf, [elem_ptr(b, I8, rowp, const_i64(64 * line)), *hint])

    def beam(self, cur: ir.Value, cur_s: ir.Value) -> ir.Value:
        """Layer-0 beam search from the descent's node; returns the pool size."""
        b, a = self.b, self.a
        size, k = var(b, I64, ONE), var(b, I64, ZERO)
        self.st(I32, "pool_id", ZERO, b.trunc(b.load(cur), I32))
        self.st(F32, "pool_s", ZERO, b.load(cur_s))
        self.st(I8, "pool_x", ZERO, ir.Constant(I8, 0))
        self.st(I32, "visited", b.load(cur), a["tag"])
        nk = var(b, I64, ZERO)
        with loop(b, "expand") as ex:
            kk = b.load(k)
            ex.break_unless(b.icmp_signed("<", kk, b.load(size)))
            expanded = b.icmp_signed("!=", self.ld(I8, "pool_x", kk), ir.Constant(I8, 0))
            with b.if_then(expanded):
                b.store(b.add(kk, ONE), k)
            ex.continue_if(expanded)
            self.st(I8, "pool_x", kk, ir.Constant(I8, 1))
            u = b.sext(self.ld(I32, "pool_id", kk), I64)
            b.store(b.load(size), nk)
            self.visit_neighbours(u, size, nk)
            b.store(b.select(b.icmp_signed("<=", b.load(nk), kk), b.load(nk), b.add(kk, ONE)), k)
        return b.load(size)

    def visit_neighbours(self, u: ir.Value, size: ir.Value, nk: ir.Value) -> None:
        """Score u's unvisited neighbours into the sorted pool; ``nk`` = first new slot.

        Two passes: the first tags the unvisited neighbours, lists them in ``fresh`` and
        prefetches their rows, so the memory reads of all of them overlap; the second scores
        them. Already-visited neighbours cost no memory traffic beyond their tag."""
        b, a = self.b, self.a
        count = var(b, I64, ZERO)
        with self.links("nbr0", "m0", u) as (scan, nb):
            scan.continue_if(b.icmp_signed("==", self.ld(I32, "visited", nb), a["tag"]))
            self.st(I32, "visited", nb, a["tag"])
            self.st(I32, "fresh", bump(b, count), b.trunc(nb, I32))
            self.prefetch(nb)
        with for_range(b, ZERO, b.load(count), 1, "fresh") as i:
            nb = b.sext(self.ld(I32, "fresh", i), I64)
            s = self.sim(nb)
            n = b.load(size)
            full = b.icmp_signed("==", n, a["ef"])
            worst = self.ld(F32, "pool_s", b.sub(n, ONE))
            with b.if_then(b.not_(b.and_(full, b.fcmp_ordered("<=", s, worst)))):
                p = insert_sorted(
                    b,
                    b.select(full, b.sub(n, ONE), n),
                    ZERO,
                    s,
                    a["pool_s"],
                    [(I32, a["pool_id"], b.trunc(nb, I32)), (I8, a["pool_x"], ir.Constant(I8, 0))],
                )
                b.store(b.select(full, n, b.add(n, ONE)), size)
                with b.if_then(b.icmp_signed("<", p, b.load(nk))):
                    b.store(p, nk)


def emitter(elt: ir.Type) -> Callable[[ir.IRBuilder, IsaSpec], None]:
    def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
        """Queries ``[0, nq)`` of Q, one after another: search, then write the best k to
        ``s_out`` / ``r_out`` (-inf / -1 where fewer were found)."""
        a = {name: arg for (name, _), arg in zip(PARAMS, b.function.args)}
        bad_start = [
            b.icmp_unsigned(">=", a["entry"], a["n"]),
            b.icmp_unsigned(">", a["maxlevel"], const_i64(MAX_LEVEL)),
            b.icmp_signed("<", a["ef"], ONE),
            b.icmp_signed("<", a["k"], ZERO),
        ]
        stop_if(b, functools.reduce(b.or_, bad_start), a["status"], Fault.START)
        with for_range(b, ZERO, a["nq"], 1, "query") as qi:
            search = _Search(
                b,
                dict(a, q=elem_ptr(b, F32, a["Q"], b.mul(qi, a["d"])), tag=b.add(a["tag"], b.trunc(qi, I32))),
                elt,
                isa.lanes,
            )
            size = search.beam(*search.descend())
            obase = b.mul(qi, a["k"])
            found = imin(b, size, a["k"])
            with for_range(b, ZERO, found, 1, "copy") as j:
                store_elem(b, F32, a["s_out"], b.add(obase, j), load_elem(b, F32, a["pool_s"], j))
                store_elem(b, I64, a["r_out"], b.add(obase, j), b.sext(load_elem(b, I32, a["pool_id"], j), I64))
            with for_range(b, found, a["k"], 1, "pad") as j:
                store_elem(b, F32, a["s_out"], b.add(obase, j), ir.Constant(F32, float("-inf")))
                store_elem(b, I64, a["r_out"], b.add(obase, j), const_i64(-1))
        b.ret_void()

    return emit
