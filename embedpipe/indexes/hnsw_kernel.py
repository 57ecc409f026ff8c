"""HNSW search as one JIT-compiled function (llvmlite IR): greedy descent + layer-0 beam.

Layer 0 keeps a pool of the best `ef` nodes sorted by similarity, each flagged expanded or not;
the search expands the best unexpanded node until none is left — the same stopping rule as
hnswlib's candidate/result heaps. A per-thread `visited` array of u32 tags (bumped per query)
avoids clearing. Distances are 16-lane fused multiply-adds over fp32 or int8 rows (int8 ×
per-row scale). `HnswIndex.search_reference` in numpy is the oracle for this kernel.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import F32, I8, I32, I64, PTR, const_i64, intrinsic
from embedpipe.indexes.irkit import LANES, Fn as _Fn, emit_dot as _emit_dot
from embedpipe.indexes.quant import add_query_offset

log = logging.getLogger(__name__)
PREFETCH_LINES = 2  # cache lines of each neighbour's row requested before scoring them
_lock = threading.Lock()
_compiled: dict[str, Any] = {}
_ARGS = ["X", "scale", "d", "nbr0", "m0", "upoff", "nbru", "mu", "entry", "maxlevel", "q",
         "ef", "visited", "tag", "pool_id", "pool_s", "pool_x"]
_TYPES = [PTR, PTR, I64, PTR, I64, PTR, PTR, I64, I64, I64, PTR, I64, PTR, I32, PTR, PTR, PTR]
_SIG = ctypes.CFUNCTYPE(ctypes.c_int64, *[
    ctypes.c_void_p if t is PTR else (ctypes.c_int32 if t is I32 else ctypes.c_int64)
    for t in _TYPES])


def search_ir(quant: str) -> str:
    """Module text with `ep_hnsw_search` for fp32 or int8 rows."""
    elt = {"fp32": F32, "int8": I8}[quant]
    module = ir.Module(name=f"ep_hnsw_{quant}")
    dot = _emit_dot(module, elt)
    fn = ir.Function(module, ir.FunctionType(I64, _TYPES), name="ep_hnsw_search")
    a = dict(zip(_ARGS, fn.args))
    for name, arg in a.items():
        arg.name = name
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    f = _Fn(b)
    one, zero = const_i64(1), const_i64(0)

    def sim(node: ir.Value) -> ir.Value:
        return b.call(dot, [a["X"], a["scale"], a["d"], a["q"], node])

    def ld(ty: ir.Type, base: str | ir.Value, idx: ir.Value) -> ir.Value:
        return b.load(f.at(ty, a[base] if isinstance(base, str) else base, idx), typ=ty)

    def st(ty: ir.Type, base: str, idx: ir.Value, v: ir.Value) -> None:
        b.store(v, f.at(ty, a[base], idx))

    pf = intrinsic(module, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
    cur = f.var(I64, a["entry"])
    cur_s = f.var(F32, sim(a["entry"]))
    layer = f.var(I64, a["maxlevel"])
    changed = f.var(I64, zero)
    j = f.var(I64, zero)

    # ---- greedy descent through layers maxlevel .. 1
    def descend(out: ir.Block, head: ir.Block) -> None:
        f.put(changed, one)

        def hop(out2: ir.Block, head2: ir.Block) -> None:
            f.put(changed, zero)
            row = b.add(ld(I64, "upoff", f.get(cur)), b.sub(f.get(layer), one))
            base = b.mul(row, a["mu"])
            f.put(j, zero)

            def scan(out3: ir.Block, head3: ir.Block) -> None:
                nb = b.sext(ld(I32, "nbru", b.add(base, f.get(j))), I64)
                f.put(j, b.add(f.get(j), one))
                with b.if_then(b.icmp_signed("<", nb, zero)):
                    b.branch(out3)
                s = sim(nb)
                with b.if_then(b.fcmp_ordered(">", s, f.get(cur_s))):
                    f.put(cur_s, s)
                    f.put(cur, nb)
                    f.put(changed, one)

            f.loop(lambda: b.icmp_signed("<", f.get(j), a["mu"]), scan)

        f.loop(lambda: b.icmp_signed("!=", f.get(changed), zero), hop)
        f.put(layer, b.sub(f.get(layer), one))

    f.loop(lambda: b.icmp_signed(">", f.get(layer), zero), descend)

    # ---- layer-0 beam search over a sorted pool of ef entries
    size = f.var(I64, one)
    k = f.var(I64, zero)
    st(I32, "pool_id", zero, b.trunc(f.get(cur), I32))
    st(F32, "pool_s", zero, f.get(cur_s))
    st(I8, "pool_x", zero, ir.Constant(I8, 0))
    st(I32, "visited", f.get(cur), a["tag"])
    nk = f.var(I64, zero)
    p = f.var(I64, zero)

    def expand(out: ir.Block, head: ir.Block) -> None:
        kk = f.get(k)
        with b.if_then(b.icmp_signed("!=", ld(I8, "pool_x", kk), ir.Constant(I8, 0))):
            f.put(k, b.add(kk, one))
            b.branch(head)
        st(I8, "pool_x", kk, ir.Constant(I8, 1))
        u = b.sext(ld(I32, "pool_id", kk), I64)
        f.put(nk, f.get(size))
        f.put(j, zero)
        base = b.mul(u, a["m0"])

        def prefetch(out2: ir.Block, head2: ir.Block) -> None:
            nb = b.sext(ld(I32, "nbr0", b.add(base, f.get(j))), I64)
            f.put(j, b.add(f.get(j), one))
            with b.if_then(b.icmp_signed("<", nb, zero)):
                b.branch(out2)
            rowp = b.gep(a["X"], [b.mul(nb, a["d"])], source_etype=elt)
            for line in range(PREFETCH_LINES):
                b.call(pf, [b.gep(rowp, [const_i64(64 * line)], source_etype=I8),
                            ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

        f.put(j, zero)
        f.loop(lambda: b.icmp_signed("<", f.get(j), a["m0"]), prefetch)
        f.put(j, zero)

        def neighbour(out2: ir.Block, head2: ir.Block) -> None:
            nb = b.sext(ld(I32, "nbr0", b.add(base, f.get(j))), I64)
            f.put(j, b.add(f.get(j), one))
            with b.if_then(b.icmp_signed("<", nb, zero)):
                b.branch(out2)
            with b.if_then(b.icmp_signed("==", ld(I32, "visited", nb), a["tag"])):
                b.branch(head2)
            st(I32, "visited", nb, a["tag"])
            s = sim(nb)
            n = f.get(size)
            full = b.icmp_signed("==", n, a["ef"])
            worst = ld(F32, "pool_s", b.sub(n, one))
            with b.if_then(b.and_(full, b.fcmp_ordered("<=", s, worst))):
                b.branch(head2)
            f.put(p, b.select(full, b.sub(n, one), n))

            def shift(out3: ir.Block, head3: ir.Block) -> None:
                pp = f.get(p)
                prev = b.sub(pp, one)
                with b.if_then(b.fcmp_ordered(">=", ld(F32, "pool_s", prev), s)):
                    b.branch(out3)
                st(F32, "pool_s", pp, ld(F32, "pool_s", prev))
                st(I32, "pool_id", pp, ld(I32, "pool_id", prev))
                st(I8, "pool_x", pp, ld(I8, "pool_x", prev))
                f.put(p, prev)

            f.loop(lambda: b.icmp_signed(">", f.get(p), zero), shift)
            pp = f.get(p)
            st(F32, "pool_s", pp, s)
            st(I32, "pool_id", pp, b.trunc(nb, I32))
            st(I8, "pool_x", pp, ir.Constant(I8, 0))
            f.put(size, b.select(full, n, b.add(n, one)))
            with b.if_then(b.icmp_signed("<", pp, f.get(nk))):
                f.put(nk, pp)

        f.loop(lambda: b.icmp_signed("<", f.get(j), a["m0"]), neighbour)
        kk = f.get(k)
        f.put(k, b.select(b.icmp_signed("<=", f.get(nk), kk), f.get(nk), b.add(kk, one)))

    f.loop(lambda: b.icmp_signed("<", f.get(k), f.get(size)), expand)
    b.ret(f.get(size))
    return str(module)


def prune_ir() -> str:
    """Module text with `ep_hnsw_prune`: the neighbour-selection heuristic for a block of nodes.

    For node u = nodes[i]: sims of its candidates cand[i, :] (-1 = none, u itself skipped) to u,
    insertion-sorted descending, then keep candidate c if fewer than m are kept and
    sim(c, kept) <= sim(c, u) for every kept one (early exit on the first violation).
    """
    module = ir.Module(name="ep_hnsw_prune")
    dot = _emit_dot(module, F32)
    types = [PTR, I64, PTR, I64, PTR, I64, I64, PTR, PTR, PTR, I64]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), types), name="ep_hnsw_prune")
    X, d, nodes, nb, cand, c, m, out, sid, ss, keep_pruned = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    f = _Fn(b)
    one, zero = const_i64(1), const_i64(0)
    i, j, a, cnt, kept, p, ok = (f.var(I64, zero) for _ in range(7))

    def row(k: ir.Value) -> ir.Value:
        return b.gep(X, [b.mul(k, d)], source_etype=F32)

    def per_node(out0: ir.Block, head0: ir.Block) -> None:
        ii = f.get(i)
        u = b.load(f.at(I64, nodes, ii), typ=I64)
        f.put(i, b.add(ii, one))
        f.put(cnt, zero)
        f.put(j, zero)

        def gather(out1: ir.Block, head1: ir.Block) -> None:
            jj = f.get(j)
            f.put(j, b.add(jj, one))
            v = b.sext(b.load(f.at(I32, cand, b.add(b.mul(ii, c), jj)), typ=I32), I64)
            with b.if_then(b.or_(b.icmp_signed("<", v, zero), b.icmp_signed("==", v, u))):
                b.branch(head1)
            s = b.call(dot, [X, X, d, row(u), v])
            f.put(p, f.get(cnt))

            def shift(out2: ir.Block, head2: ir.Block) -> None:
                pp = f.get(p)
                prev = b.sub(pp, one)
                with b.if_then(b.fcmp_ordered(">=", b.load(f.at(F32, ss, prev), typ=F32), s)):
                    b.branch(out2)
                b.store(b.load(f.at(F32, ss, prev), typ=F32), f.at(F32, ss, pp))
                b.store(b.load(f.at(I32, sid, prev), typ=I32), f.at(I32, sid, pp))
                f.put(p, prev)

            f.loop(lambda: b.icmp_signed(">", f.get(p), zero), shift)
            b.store(s, f.at(F32, ss, f.get(p)))
            b.store(b.trunc(v, I32), f.at(I32, sid, f.get(p)))
            f.put(cnt, b.add(f.get(cnt), one))

        f.loop(lambda: b.icmp_signed("<", f.get(j), c), gather)
        f.put(kept, zero)
        f.put(j, zero)
        obase = b.mul(ii, m)

        def select(out1: ir.Block, head1: ir.Block) -> None:
            jj = f.get(j)
            f.put(j, b.add(jj, one))
            cj = b.sext(b.load(f.at(I32, sid, jj), typ=I32), I64)
            sj = b.load(f.at(F32, ss, jj), typ=F32)
            f.put(a, zero)
            f.put(ok, one)

            def check(out2: ir.Block, head2: ir.Block) -> None:
                aa = f.get(a)
                f.put(a, b.add(aa, one))
                r = b.sext(b.load(f.at(I32, out, b.add(obase, aa)), typ=I32), I64)
                with b.if_then(b.fcmp_ordered(">", b.call(dot, [X, X, d, row(cj), r]), sj)):
                    f.put(ok, zero)
                    b.branch(out2)

            f.loop(lambda: b.icmp_signed("<", f.get(a), f.get(kept)), check)
            with b.if_then(b.icmp_signed("!=", f.get(ok), zero)):
                b.store(b.trunc(cj, I32), f.at(I32, out, b.add(obase, f.get(kept))))
                f.put(kept, b.add(f.get(kept), one))
                b.store(ir.Constant(I32, -1), f.at(I32, sid, jj))

        f.loop(lambda: b.and_(b.icmp_signed("<", f.get(j), f.get(cnt)),
                              b.icmp_signed("<", f.get(kept), m)), select)
        f.put(j, zero)

        def top_up(out1: ir.Block, head1: ir.Block) -> None:
            jj = f.get(j)
            f.put(j, b.add(jj, one))
            cj = b.load(f.at(I32, sid, jj), typ=I32)
            with b.if_then(b.icmp_signed(">=", cj, ir.Constant(I32, 0))):
                b.store(cj, f.at(I32, out, b.add(obase, f.get(kept))))
                f.put(kept, b.add(f.get(kept), one))

        f.loop(lambda: b.and_(b.and_(b.icmp_signed("!=", keep_pruned, zero),
                                     b.icmp_signed("<", f.get(j), f.get(cnt))),
                              b.icmp_signed("<", f.get(kept), m)), top_up)

        def fill(out1: ir.Block, head1: ir.Block) -> None:
            b.store(ir.Constant(I32, -1), f.at(I32, out, b.add(obase, f.get(kept))))
            f.put(kept, b.add(f.get(kept), one))

        f.loop(lambda: b.icmp_signed("<", f.get(kept), m), fill)

    f.loop(lambda: b.icmp_signed("<", f.get(i), nb), per_node)
    b.ret_void()
    return str(module)


_PRUNE_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_prune_pool: ThreadPoolExecutor | None = None


def prune_nodes(x: np.ndarray, nodes: np.ndarray, cand: np.ndarray, m: int,
                keep_pruned: bool = False) -> np.ndarray | None:
    """JIT heuristic pruning for `nodes` (ids into fp32 rows `x`); None if unavailable.

    keep_pruned: fill slots the heuristic left empty with the most similar rejected
    candidates (hnswlib's lists fill up the same way: reverse links are appended unpruned
    until a list is full)."""
    global _prune_pool
    from embedpipe.codegen.isa import default_threads

    n, d = x.shape
    if d % LANES:
        return None
    try:
        with _lock:
            if "prune" not in _compiled:
                from embedpipe.codegen.isa import detect_isa
                from embedpipe.codegen.jit import compile_object, host_engine
                obj = compile_object(prune_ir(), detect_isa())
                addr = host_engine().load(obj, ["ep_hnsw_prune"])["ep_hnsw_prune"]
                _compiled["prune"] = _PRUNE_SIG(addr)
        fn = _compiled["prune"]
    except Exception as exc:
        log.warning("HNSW prune kernel unavailable (%s); using numpy", exc)
        return None
    x = np.ascontiguousarray(x, np.float32)
    nodes = np.ascontiguousarray(nodes, np.int64)
    cand = np.ascontiguousarray(cand, np.int32)
    c = cand.shape[1]
    out = np.empty((len(nodes), m), np.int32)

    def run(lo: int, hi: int) -> None:
        sid, ss = np.empty(c, np.int32), np.empty(c, np.float32)
        fn(x.ctypes.data, d, nodes[lo:].ctypes.data, hi - lo, cand[lo:].ctypes.data, c, m,
           out[lo:].ctypes.data, sid.ctypes.data, ss.ctypes.data, int(keep_pruned))

    threads = default_threads()
    if threads == 1 or len(nodes) < 256:
        run(0, len(nodes))
        return out
    if _prune_pool is None:
        _prune_pool = ThreadPoolExecutor(threads, thread_name_prefix="embedpipe-prune")
    step = 256
    futs = [_prune_pool.submit(run, lo, min(len(nodes), lo + step))
            for lo in range(0, len(nodes), step)]
    for fut in futs:
        fut.result()
    return out


def _compile(quant: str):
    from embedpipe.codegen.isa import detect_isa
    from embedpipe.codegen.jit import compile_object, host_engine

    with _lock:
        if quant not in _compiled:
            obj = compile_object(search_ir(quant), detect_isa())
            _compiled[quant] = _SIG(host_engine().load(obj, ["ep_hnsw_search"])["ep_hnsw_search"])
        return _compiled[quant]


class HnswKernel:
    """Binds one HnswIndex's arrays to the compiled search; per-thread scratch buffers."""

    def __init__(self, index: Any, fn: Any) -> None:
        from embedpipe.codegen.isa import default_threads

        self.ix, self.fn = index, fn
        self.arrays = [np.ascontiguousarray(x) for x in
                       (index.codes, index.row_scale(),
                        index.nbr0, index.upoff, index.nbru if len(index.nbru) else
                        np.full((1, index.m), -1, np.int32))]
        self.threads = default_threads()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_index(cls, index: Any) -> HnswKernel | None:
        if index.dim % LANES or index.quant not in ("fp32", "int8"):
            return None
        try:
            return cls(index, _compile(index.quant))
        except Exception as exc:  # no usable LLVM target: numpy reference search instead
            log.warning("HNSW JIT kernel unavailable (%s); using numpy search", exc)
            return None

    def _scratch(self, ef: int) -> tuple:
        loc = self._local
        if getattr(loc, "ef", -1) < ef:
            loc.ef = ef
            loc.pid = np.empty(ef, np.int32)
            loc.ps = np.empty(ef, np.float32)
            loc.px = np.empty(ef, np.int8)
        if not hasattr(loc, "visited"):
            loc.visited = np.zeros(self.ix.count, np.int32)
            loc.tag = 0
        loc.tag += 1
        if loc.tag >= 2**31 - 1:
            loc.visited[:] = 0
            loc.tag = 1
        return loc

    def _run(self, q: np.ndarray, k: int, ef: int, s_out: np.ndarray, r_out: np.ndarray) -> None:
        X, scale, nbr0, upoff, nbru = self.arrays
        ptrs = [X.ctypes.data, scale.ctypes.data, nbr0.ctypes.data, upoff.ctypes.data,
                nbru.ctypes.data]
        for i in range(len(q)):
            loc = self._scratch(ef)
            qi = q[i]
            n = self.fn(ptrs[0], ptrs[1], self.ix.dim, ptrs[2], nbr0.shape[1], ptrs[3], ptrs[4],
                        nbru.shape[1], self.ix.entry, int(self.ix.level[self.ix.entry]),
                        qi.ctypes.data, ef, loc.visited.ctypes.data, loc.tag,
                        loc.pid.ctypes.data, loc.ps.ctypes.data, loc.px.ctypes.data)
            m = min(n, k)
            s_out[i, :m] = loc.ps[:m]
            r_out[i, :m] = loc.pid[:m]

    def search(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s, r = self._search_codes(np.ascontiguousarray(self.ix.query_weights(q), np.float32), k, ef)
        # the kernel scores raw codes; a centred per-dimension scale adds one constant per query
        return add_query_offset(s, q, self.ix.offset), r

    def _search_codes(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.full((len(q), k), -np.inf, np.float32)
        r = np.full((len(q), k), -1, np.int64)
        if len(q) < 4 * self.threads or self.threads == 1:
            self._run(q, k, ef, s, r)
            return s, r
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embedpipe-hnsw")
        step = -(-len(q) // self.threads)
        futs = [self._pool.submit(self._run, q[lo:lo + step], k, ef, s[lo:lo + step],
                                  r[lo:lo + step]) for lo in range(0, len(q), step)]
        for fut in futs:
            fut.result()
        return s, r
