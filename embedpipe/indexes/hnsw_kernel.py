"""HNSW search as a native kernel (the emitter for HNSW's graph layout): greedy descent,
then a layer-0 beam.

Layer 0 keeps a pool of the best `ef` nodes sorted by similarity, each flagged expanded or not;
the search expands the best unexpanded node until none is left — the same stopping rule as
hnswlib's candidate/result heaps. A per-slot `visited` array of u32 tags (bumped per query)
avoids clearing. Distances are fused multiply-adds over fp32 or int8 rows (int8 × per-row
scale). One kernel call searches a range of queries; ranges run on the native worker pool.
`HnswIndex.search_reference` in numpy is the oracle (and the fallback when
`HnswKernel.for_index` is None). The neighbour-selection kernel lives in `hnsw_prune`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llvmlite.ir as ir
import numpy as np

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
from embedpipe.codegen.kernel import Kernel, KernelModule
from embedpipe.codegen.rowdot import emit_dot
from embedpipe.codegen.threads import default_threads, split_range
from embedpipe.indexes.quant import add_query_offset

PREFETCH_LINES = 2  # cache lines of each neighbour's row requested before scoring them
ONE, ZERO = const_i64(1), const_i64(0)
_GRAPH = [
    ("X", PTR),
    ("scale", PTR),
    ("d", I64),
    ("nbr0", PTR),
    ("m0", I64),
    ("upoff", PTR),
    ("nbru", PTR),
    ("mu", I64),
    ("entry", I64),
    ("maxlevel", I64),
]
_SCRATCH = [("ef", I64), ("visited", PTR), ("tag", I32), ("pool_id", PTR), ("pool_s", PTR), ("pool_x", PTR)]
_PARAMS = [*_GRAPH, ("Q", PTR), ("nq", I64), ("k", I64), ("s_out", PTR), ("r_out", PTR), *_SCRATCH]


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
        neighbour list (row ``row`` of ``lists``), up to its first -1."""
        b, a = self.b, self.a
        base = b.mul(row, a[width])
        j = var(b, I64, ZERO)
        with loop(b, "links") as scan:
            scan.break_unless(b.icmp_signed("<", b.load(j), a[width]))
            nb = b.sext(self.ld(I32, lists, b.add(base, bump(b, j))), I64)
            scan.break_if(b.icmp_signed("<", nb, ZERO))
            yield scan, nb

    def prefetch(self, u: ir.Value) -> None:
        """Ask for the first cache lines of every neighbour's row before scoring any."""
        b, a = self.b, self.a
        pf = intrinsic(b.module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
        with self.links("nbr0", "m0", u) as (_, nb):
            rowp = elem_ptr(b, self.elt, a["X"], b.mul(nb, a["d"]))
            for line in range(PREFETCH_LINES):
                b.call(
                    pf,
                    [
                        elem_ptr(b, I8, rowp, const_i64(64 * line)),
                        ir.Constant(I32, 0),
                        ir.Constant(I32, 3),
                        ir.Constant(I32, 1),
                    ],
                )

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
            self.prefetch(u)
            self.visit_neighbours(u, size, nk)
            b.store(b.select(b.icmp_signed("<=", b.load(nk), kk), b.load(nk), b.add(kk, ONE)), k)
        return b.load(size)

    def visit_neighbours(self, u: ir.Value, size: ir.Value, nk: ir.Value) -> None:
        """Score u's unvisited neighbours into the sorted pool; ``nk`` = first new slot."""
        b, a = self.b, self.a
        with self.links("nbr0", "m0", u) as (scan, nb):
            scan.continue_if(b.icmp_signed("==", self.ld(I32, "visited", nb), a["tag"]))
            self.st(I32, "visited", nb, a["tag"])
            s = self.sim(nb)
            n = b.load(size)
            full = b.icmp_signed("==", n, a["ef"])
            worst = self.ld(F32, "pool_s", b.sub(n, ONE))
            scan.continue_if(b.and_(full, b.fcmp_ordered("<=", s, worst)))
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


def _emitter(elt: ir.Type):
    def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
        """Queries ``[0, nq)`` of Q, one after another: search, then copy the best k (the
        caller pre-fills ``s_out`` / ``r_out`` with -inf / -1)."""
        a = {name: arg for (name, _), arg in zip(_PARAMS, b.function.args)}
        with for_range(b, ZERO, a["nq"], 1, "query") as qi:
            search = _Search(
                b,
                dict(a, q=elem_ptr(b, F32, a["Q"], b.mul(qi, a["d"])), tag=b.add(a["tag"], b.trunc(qi, I32))),
                elt,
                isa.lanes,
            )
            size = search.beam(*search.descend())
            obase = b.mul(qi, a["k"])
            with for_range(b, ZERO, imin(b, size, a["k"]), 1, "copy") as j:
                store_elem(b, F32, a["s_out"], b.add(obase, j), load_elem(b, F32, a["pool_s"], j))
                store_elem(b, I64, a["r_out"], b.add(obase, j), b.sext(load_elem(b, I32, a["pool_id"], j), I64))
        b.ret_void()

    return emit


HNSW_SEARCH = {
    quant: Kernel(f"hnsw_search_{quant}", _PARAMS, _emitter(elt)) for quant, elt in (("fp32", F32), ("int8", I8))
}
HNSW_MODULE = KernelModule("ep_hnsw", list(HNSW_SEARCH.values()))
QUERIES_PER_THREAD = 4  # fewer queries than this per thread run on the calling thread


class _Slot:
    """Scratch of one concurrently running item: visited tags and the ef-sized pool."""

    def __init__(self, count: int) -> None:
        self.visited = np.zeros(count, np.int32)
        self.tag = 0
        self.ef = -1

    def claim(self, ef: int, queries: int) -> int:
        """Grow the pool to ``ef``; reserve ``queries`` tags; returns the first."""
        if self.ef < ef:
            self.ef = ef
            self.pid = np.empty(ef, np.int32)
            self.ps = np.empty(ef, np.float32)
            self.px = np.empty(ef, np.int8)
        if self.tag + queries >= 2**31 - 1:
            self.visited[:] = 0
            self.tag = 0
        first = self.tag + 1
        self.tag += queries
        return first


class HnswKernel:
    """Binds one HnswIndex's arrays to the compiled search; scratch per calling thread."""

    def __init__(self, index: Any, native: Any) -> None:
        self.ix, self.native = index, native
        self.arrays = [
            np.ascontiguousarray(x)
            for x in (
                index.codes,
                index.row_scale(),
                index.nbr0,
                index.upoff,
                index.nbru if len(index.nbru) else np.full((1, index.m), -1, np.int32),
            )
        ]
        self.threads = default_threads()
        self._local = threading.local()

    @classmethod
    def for_index(cls, index: Any) -> HnswKernel | None:
        kernel = HNSW_SEARCH.get(index.quant)
        native = kernel.native() if kernel is not None else None
        return cls(index, native) if native is not None else None

    def _slots(self, n: int) -> list[_Slot]:
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = []
        while len(slots) < n:
            slots.append(_Slot(self.ix.count))
        return slots[:n]

    def search(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s, r = self._search_codes(np.ascontiguousarray(self.ix.query_weights(q), np.float32), k, ef)
        # the kernel scores raw codes; a centred per-dimension scale adds one constant per query
        return add_query_offset(s, q, self.ix.offset), r

    def _search_codes(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.full((len(q), k), -np.inf, np.float32)
        r = np.full((len(q), k), -1, np.int64)
        if not len(q):
            return s, r
        X, scale, nbr0, upoff, nbru = self.arrays
        ix = self.ix
        graph = (
            X.ctypes.data,
            scale.ctypes.data,
            ix.dim,
            nbr0.ctypes.data,
            nbr0.shape[1],
            upoff.ctypes.data,
            nbru.ctypes.data,
            nbru.shape[1],
            ix.entry,
            int(ix.level[ix.entry]),
        )
        parts = self.threads if len(q) >= QUERIES_PER_THREAD * self.threads else 1
        ranges = split_range(0, len(q), parts)
        items = []
        for slot, (lo, hi) in zip(self._slots(len(ranges)), ranges):
            tag = slot.claim(ef, hi - lo)
            items.append(
                (
                    *graph,
                    q.ctypes.data + 4 * lo * ix.dim,
                    hi - lo,
                    k,
                    s.ctypes.data + 4 * lo * k,
                    r.ctypes.data + 8 * lo * k,
                    ef,
                    slot.visited.ctypes.data,
                    tag,
                    slot.pid.ctypes.data,
                    slot.ps.ctypes.data,
                    slot.px.ctypes.data,
                )
            )
        self.native.run(items)
        return s, r
