"""HNSW search as a native kernel (the emitter for HNSW's graph layout): greedy descent,
then a layer-0 beam.

Layer 0 keeps a pool of the best `ef` nodes sorted by similarity, each flagged expanded or not;
the search expands the best unexpanded node until none is left — the same stopping rule as
hnswlib's candidate/result heaps. A per-slot `visited` array of u32 tags (bumped per query)
avoids clearing. Distances are fused multiply-adds over fp32 or int8 rows (int8 × per-row
scale). One kernel call searches a range of queries; ranges run on the native worker pool.
`HnswIndex.search_reference` in numpy is the oracle (and the fallback when
`HnswKernel.for_index` is None). Insertion (search_layer + neighbour selection while building)
lives in `hnsw_insert_kernel` and `hnsw_build_ir`.
"""

from __future__ import annotations

import ctypes
import enum
import functools
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
from embedpipe.indexes.format import IndexFileError
from embedpipe.indexes.quant import add_query_offset

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
_PARAMS = [*_GRAPH, ("Q", PTR), ("nq", I64), ("k", I64), ("s_out", PTR), ("r_out", PTR), *_SCRATCH, ("status", PTR)]
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


def _emitter(elt: ir.Type):
    def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
        """Queries ``[0, nq)`` of Q, one after another: search, then write the best k to
        ``s_out`` / ``r_out`` (-inf / -1 where fewer were found)."""
        a = {name: arg for (name, _), arg in zip(_PARAMS, b.function.args)}
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


HNSW_SEARCH = {
    quant: Kernel(f"hnsw_search_{quant}", _PARAMS, _emitter(elt)) for quant, elt in (("fp32", F32), ("int8", I8))
}
HNSW_MODULE = KernelModule("ep_hnsw", list(HNSW_SEARCH.values()))
QUERIES_PER_THREAD = 4  # fewer queries than this per thread run on the calling thread


FAULT_PROBLEMS = {
    Fault.START: "its entry point or top level is outside the graph",
    Fault.NEIGHBOUR: "a neighbour list names a node outside the graph",
    Fault.UPPER_ROW: "an upper-layer row lies outside the stored lists",
}


_AT = {name: i for i, (name, _) in enumerate(_PARAMS)}


def _address(a: np.ndarray) -> int:
    """Data address of a C-contiguous array (``a.ctypes.data`` costs ~1 µs, a large share of
    a single-query search's Python overhead; read-only arrays take that path)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


class _Slot:
    """Scratch of one concurrently running item: visited tags, the ef-sized pool, a status
    word, and the item's kernel arguments packed as 64-bit words (the graph's and the
    scratch's set once; the query's set per call)."""

    def __init__(self, graph: tuple[int, ...], count: int) -> None:
        self.visited = np.zeros(count, np.int32)
        self.status = np.zeros(1, np.int64)
        self.words = np.zeros(len(_PARAMS), np.int64)
        self.words[: len(graph)] = graph
        self.words[_AT["visited"]] = self.visited.ctypes.data
        self.words[_AT["status"]] = self.status.ctypes.data
        self.fresh = np.empty(max(1, graph[_AT["m0"]]), np.int32)  # unvisited neighbours of one node
        self.words[_AT["fresh"]] = self.fresh.ctypes.data
        self.address = self.words.ctypes.data
        self.tag = 0
        self.ef = -1

    def claim(self, ef: int, queries: int) -> None:
        """Grow the pool to ``ef``; reserve ``queries`` visited tags for the next call."""
        words = self.words
        if self.ef < ef:
            self.ef = ef
            self.pool = (np.empty(ef, np.int32), np.empty(ef, np.float32), np.empty(ef, np.int8))
            for name, arr in zip(("pool_id", "pool_s", "pool_x"), self.pool):
                words[_AT[name]] = arr.ctypes.data
        if self.tag + queries >= 2**31 - 1:
            self.visited[:] = 0
            self.tag = 0
        words[_AT["tag"]] = self.tag + 1
        words[_AT["ef"]] = ef
        words[_AT["nq"]] = queries
        self.tag += queries

    def fault(self) -> Fault | None:
        """The fault the last call stopped on (cleared), or None."""
        if not self.status[0]:
            return None
        fault = Fault(int(self.status[0]))
        self.status[0] = 0
        return fault


class HnswKernel:
    """Binds one HnswIndex's arrays to the compiled search; scratch per calling thread.

    The kernel is told the node count and row count it may index (the smallest of the arrays
    it reads), so even a graph the validator did not see ends in `IndexFileError`, never in
    an out-of-bounds read.
    """

    def __init__(self, index: Any, native: Any) -> None:
        self.ix, self.native = index, native
        X, scale, nbr0, upoff, nbru = self.arrays = [
            np.ascontiguousarray(x)
            for x in (
                index.codes,
                index.row_scale(),
                index.nbr0,
                index.upoff,
                index.nbru if len(index.nbru) else np.full((1, index.m), -1, np.int32),
            )
        ]
        if X.ndim != 2 or X.shape[1] != index.dim or nbr0.ndim != 2 or nbru.ndim != 2:
            raise IndexFileError(self._path(), "its vector or graph sections have the wrong shape; rebuild the index")
        self.n = min(len(X), len(scale), len(nbr0), len(upoff), index.count)
        entry = int(index.entry) if 0 <= index.entry < min(self.n, len(index.level)) else -1  # -1: Fault.START
        top = int(index.level[entry]) if entry >= 0 else 0
        self.graph = (
            self.n,
            X.ctypes.data,
            scale.ctypes.data,
            index.dim,
            nbr0.ctypes.data,
            nbr0.shape[1],
            upoff.ctypes.data,
            nbru.ctypes.data,
            len(nbru),
            nbru.shape[1],
            entry,
            top,
        )
        self.threads = default_threads()
        self._local = threading.local()

    def _path(self) -> str:
        return getattr(self.ix, "path", "this hnsw index")

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
            slots.append(_Slot(self.graph, self.n))
        return slots[:n]

    def search(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s, r = self._search_codes(np.ascontiguousarray(self.ix.query_weights(q), np.float32), k, ef)
        # the kernel scores raw codes; a centred per-dimension scale adds one constant per query
        return add_query_offset(s, q, self.ix.offset), r

    def _search_codes(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        nq, d = len(q), self.ix.dim
        s = np.empty((nq, k), np.float32)
        r = np.empty((nq, k), np.int64)
        if not nq:
            return s, r
        parts = self.threads if nq >= QUERIES_PER_THREAD * self.threads else 1
        ranges = split_range(0, nq, parts)
        slots = self._slots(len(ranges))
        qa, sa, ra = _address(q), _address(s), _address(r)
        for slot, (lo, hi) in zip(slots, ranges):
            slot.claim(ef, hi - lo)
            w = slot.words
            w[_AT["Q"]] = qa + 4 * lo * d
            w[_AT["k"]] = k
            w[_AT["s_out"]] = sa + 4 * lo * k
            w[_AT["r_out"]] = ra + 8 * lo * k
        if len(slots) == 1:
            self.native.run_packed(slots[0].address, 8 * len(_PARAMS), 1)
        else:
            packed = np.stack([slot.words for slot in slots])
            self.native.run_packed(packed.ctypes.data, 8 * len(_PARAMS), len(slots))
        faults = [f for f in (slot.fault() for slot in slots) if f is not None]  # reads and clears each
        if faults:
            raise IndexFileError(self._path(), f"HNSW search stopped: {FAULT_PROBLEMS[faults[0]]}; rebuild the index")
        return s, r
