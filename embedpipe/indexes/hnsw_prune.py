"""HNSW neighbour selection (the heuristic of the paper and hnswlib) as a native kernel.

For node u = nodes[i]: sims of its candidates cand[i, :] (-1 = none, u itself skipped) to u,
insertion-sorted descending, then keep candidate c if fewer than m are kept and
sim(c, kept) <= sim(c, u) for every kept one (early exit on the first violation).
`hnsw.prune_reference` (candidate gram matrices in numpy) is the twin.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    bump,
    const_i64,
    elem_ptr,
    for_range,
    insert_sorted,
    load_elem,
    loop,
    store_elem,
    var,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.rowdot import emit_dot
from embedpipe.codegen.threads import default_threads

NODES_PER_ITEM = 256
ONE, ZERO = const_i64(1), const_i64(0)
_PARAMS = [
    ("X", PTR),
    ("d", I64),
    ("nodes", PTR),
    ("nb", I64),
    ("cand", PTR),
    ("c", I64),
    ("m", I64),
    ("out", PTR),
    ("sid", PTR),
    ("ss", PTR),
    ("keep_pruned", I64),
]


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """Per node: gather and sort its candidates, select, top up (keep_pruned), pad with -1."""
    X, d, nodes, nb, cand, c, m, out, sid, ss, keep_pruned = b.function.args
    dot = emit_dot(b.module, F32, isa.lanes)

    def sim(u: ir.Value, v: ir.Value) -> ir.Value:
        return b.call(dot, [X, X, d, elem_ptr(b, F32, X, b.mul(u, d)), v])

    with for_range(b, ZERO, nb, 1, "node") as i:
        u = load_elem(b, I64, nodes, i)
        cnt = var(b, I64, ZERO)
        with for_range(b, ZERO, c, 1, "gather") as j:
            v = b.sext(load_elem(b, I32, cand, b.add(b.mul(i, c), j)), I64)
            with b.if_then(b.not_(b.or_(b.icmp_signed("<", v, ZERO), b.icmp_signed("==", v, u)))):
                insert_sorted(b, b.load(cnt), ZERO, sim(u, v), ss, [(I32, sid, b.trunc(v, I32))])
                bump(b, cnt)
        row_out = elem_ptr(b, I32, out, b.mul(i, m))
        kept = _select(b, sim, b.load(cnt), m, row_out, sid, ss)
        j = var(b, I64, ZERO)
        with loop(b, "top_up") as lp:
            lp.break_unless(
                b.and_(
                    b.and_(b.icmp_signed("!=", keep_pruned, ZERO), b.icmp_signed("<", b.load(j), b.load(cnt))),
                    b.icmp_signed("<", b.load(kept), m),
                )
            )
            cj = load_elem(b, I32, sid, bump(b, j))
            with b.if_then(b.icmp_signed(">=", cj, ir.Constant(I32, 0))):
                store_elem(b, I32, row_out, bump(b, kept), cj)
        with for_range(b, b.load(kept), m, 1, "pad") as k:
            store_elem(b, I32, row_out, k, ir.Constant(I32, -1))
    b.ret_void()


def _select(
    b: ir.IRBuilder, sim, cnt: ir.Value, m: ir.Value, row_out: ir.Value, sid: ir.Value, ss: ir.Value
) -> ir.Value:
    """Keep sorted candidates no closer to a kept one than to u; rejected ones stay in sid,
    kept ones become -1 there.  Returns the slot counting the kept."""
    kept, j = var(b, I64, ZERO), var(b, I64, ZERO)
    with loop(b, "select") as lp:
        lp.break_unless(b.and_(b.icmp_signed("<", b.load(j), cnt), b.icmp_signed("<", b.load(kept), m)))
        jj = bump(b, j)
        cj = b.sext(load_elem(b, I32, sid, jj), I64)
        sj = load_elem(b, F32, ss, jj)
        ok = var(b, I64, ONE)
        a = var(b, I64, ZERO)
        with loop(b, "check") as chk:
            chk.break_unless(b.icmp_signed("<", b.load(a), b.load(kept)))
            r = b.sext(load_elem(b, I32, row_out, bump(b, a)), I64)
            closer = b.fcmp_ordered(">", sim(cj, r), sj)
            with b.if_then(closer):
                b.store(ZERO, ok)
            chk.break_if(closer)
        with b.if_then(b.icmp_signed("!=", b.load(ok), ZERO)):
            store_elem(b, I32, row_out, bump(b, kept), b.trunc(cj, I32))
            store_elem(b, I32, sid, jj, ir.Constant(I32, -1))
    return kept


def _twin(x: np.ndarray, nodes: np.ndarray, cand: np.ndarray, m: int, keep_pruned: bool = False) -> np.ndarray:
    from embedpipe.indexes.hnsw import prune_reference

    return prune_reference(x, nodes, cand, m, keep_pruned)


def _drive(
    native: Native, x: np.ndarray, nodes: np.ndarray, cand: np.ndarray, m: int, keep_pruned: bool = False
) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    nodes = np.ascontiguousarray(nodes, np.int64)
    cand = np.ascontiguousarray(cand, np.int32)
    d, c = x.shape[1], cand.shape[1]
    out = np.empty((len(nodes), m), np.int32)
    step = NODES_PER_ITEM if default_threads() > 1 else max(1, len(nodes))
    items, scratch = [], []
    for lo in range(0, len(nodes), step):
        sid, ss = np.empty(c, np.int32), np.empty(c, np.float32)
        scratch.append((sid, ss))
        items.append(
            (
                x.ctypes.data,
                d,
                nodes.ctypes.data + 8 * lo,
                min(step, len(nodes) - lo),
                cand.ctypes.data + 4 * lo * c,
                c,
                m,
                out.ctypes.data + 4 * lo * m,
                sid.ctypes.data,
                ss.ctypes.data,
                int(keep_pruned),
            )
        )
    if items:
        native.run(items)
    return out


PRUNE = Kernel("hnsw_prune", _PARAMS, _emit, twin=_twin, drive=_drive)
PRUNE_MODULE = KernelModule("ep_hnsw_prune", [PRUNE])
