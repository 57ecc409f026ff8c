"""Annoy best-first traversal as one JIT-compiled function (llvmlite IR).

Mirrors Annoy's `_get_all_nns`: a max-heap of (margin bound, node) seeded with every root at
+inf; split nodes push both children with min(bound, ±margin); leaf buckets and items become
candidates until `search_k` (duplicates counted, as Annoy does) are collected. Each candidate
is scored once (u32 visited tags) as cosine = v·q / |v|. `AnnoyIndex._candidates` in Python is
the reference this replaces.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import F32, I32, I64, PTR, const_i64, intrinsic
from embedpipe.indexes.irkit import Fn as _Fn, emit_dot as _emit_dot

log = logging.getLogger(__name__)
_lock = threading.Lock()
_fn: Any = None
_ARGS = ["nodes", "stride", "f", "n_items", "roots", "n_roots", "q", "search_k", "hp", "hi",
         "visited", "tag", "out_id", "out_s"]
_TYPES = [PTR, I64, I64, I64, PTR, I64, PTR, I64, PTR, PTR, PTR, I32, PTR, PTR]
_SIG = ctypes.CFUNCTYPE(ctypes.c_int64, *[
    ctypes.c_void_p if t is PTR else (ctypes.c_int32 if t is I32 else ctypes.c_int64)
    for t in _TYPES])


def search_ir() -> str:
    module = ir.Module(name="ep_annoy")
    dot = _emit_dot(module, F32)  # dot(X, scale, d, q, row): row-major rows of width d
    sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
    fn = ir.Function(module, ir.FunctionType(I64, _TYPES), name="ep_annoy_search")
    a = dict(zip(_ARGS, fn.args))
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    f = _Fn(b)
    one, zero = const_i64(1), const_i64(0)
    K = b.add(a["f"], const_i64(2))

    def word(node: ir.Value, k: ir.Value) -> ir.Value:
        return b.load(f.at(I32, a["nodes"], b.add(b.mul(node, a["stride"]), k)), typ=I32)

    def vdot(node: ir.Value) -> ir.Value:
        vptr = f.at(I32, a["nodes"], b.add(b.mul(node, a["stride"]), const_i64(3)))
        return b.call(dot, [vptr, vptr, a["f"], a["q"], zero])

    size = f.var(I64, zero)
    pos = f.var(I64, zero)
    count = f.var(I64, zero)
    nout = f.var(I64, zero)
    t = f.var(I64, zero)

    def push(pri: ir.Value, node: ir.Value) -> None:
        f.put(pos, f.get(size))
        f.put(size, b.add(f.get(size), one))

        def up(out: ir.Block, head: ir.Block) -> None:
            p = f.get(pos)
            parent = b.sdiv(b.sub(p, one), const_i64(2))
            with b.if_then(b.fcmp_ordered(">=", b.load(f.at(F32, a["hp"], parent), typ=F32), pri)):
                b.branch(out)
            b.store(b.load(f.at(F32, a["hp"], parent), typ=F32), f.at(F32, a["hp"], p))
            b.store(b.load(f.at(I32, a["hi"], parent), typ=I32), f.at(I32, a["hi"], p))
            f.put(pos, parent)

        f.loop(lambda: b.icmp_signed(">", f.get(pos), zero), up)
        b.store(pri, f.at(F32, a["hp"], f.get(pos)))
        b.store(b.trunc(node, I32), f.at(I32, a["hi"], f.get(pos)))

    def add_candidate(item: ir.Value) -> None:
        with b.if_then(b.icmp_signed("!=", b.load(f.at(I32, a["visited"], item), typ=I32),
                                     a["tag"])):
            b.store(a["tag"], f.at(I32, a["visited"], item))
            norm2 = b.bitcast(word(item, one), F32)
            norm = b.call(sqrt, [b.select(b.fcmp_ordered(">", norm2, ir.Constant(F32, 1e-30)),
                                          norm2, ir.Constant(F32, 1e-30))])
            k = f.get(nout)
            b.store(b.fdiv(vdot(item), norm), f.at(F32, a["out_s"], k))
            b.store(b.trunc(item, I32), f.at(I32, a["out_id"], k))
            f.put(nout, b.add(k, one))

    f.put(t, zero)

    def seed(out: ir.Block, head: ir.Block) -> None:
        r = b.sext(b.load(f.at(I32, a["roots"], f.get(t)), typ=I32), I64)
        push(ir.Constant(F32, float("inf")), r)
        f.put(t, b.add(f.get(t), one))

    f.loop(lambda: b.icmp_signed("<", f.get(t), a["n_roots"]), seed)

    def step(out: ir.Block, head: ir.Block) -> None:
        d = b.load(f.at(F32, a["hp"], zero), typ=F32)
        node = b.sext(b.load(f.at(I32, a["hi"], zero), typ=I32), I64)
        # pop: move the last entry to the root and sift it down
        last = b.sub(f.get(size), one)
        f.put(size, last)
        lp = b.load(f.at(F32, a["hp"], last), typ=F32)
        li = b.load(f.at(I32, a["hi"], last), typ=I32)
        f.put(pos, zero)

        def down(out2: ir.Block, head2: ir.Block) -> None:
            p = f.get(pos)
            left = b.add(b.mul(p, const_i64(2)), one)
            with b.if_then(b.icmp_signed(">=", left, f.get(size))):
                b.branch(out2)
            right = b.add(left, one)
            pl = b.load(f.at(F32, a["hp"], left), typ=F32)
            has_r = b.icmp_signed("<", right, f.get(size))
            pr = b.load(f.at(F32, a["hp"], b.select(has_r, right, left)), typ=F32)
            c = b.select(b.and_(has_r, b.fcmp_ordered(">", pr, pl)), right, left)
            pc = b.load(f.at(F32, a["hp"], c), typ=F32)
            with b.if_then(b.fcmp_ordered("<=", pc, lp)):
                b.branch(out2)
            b.store(pc, f.at(F32, a["hp"], p))
            b.store(b.load(f.at(I32, a["hi"], c), typ=I32), f.at(I32, a["hi"], p))
            f.put(pos, c)

        f.loop(lambda: ir.Constant(ir.IntType(1), 1), down)
        b.store(lp, f.at(F32, a["hp"], f.get(pos)))
        b.store(li, f.at(I32, a["hi"], f.get(pos)))

        nd = b.sext(word(node, zero), I64)
        is_item = b.and_(b.icmp_signed("==", nd, one), b.icmp_signed("<", node, a["n_items"]))
        with b.if_else(is_item) as (then, other):
            with then:
                add_candidate(node)
                f.put(count, b.add(f.get(count), one))
            with other:
                with b.if_else(b.icmp_signed("<=", nd, K)) as (leaf, split):
                    with leaf:
                        f.put(t, zero)

                        def bucket(out2: ir.Block, head2: ir.Block) -> None:
                            add_candidate(b.sext(word(node, b.add(f.get(t), one)), I64))
                            f.put(t, b.add(f.get(t), one))

                        f.loop(lambda: b.icmp_signed("<", f.get(t), nd), bucket)
                        f.put(count, b.add(f.get(count), nd))
                    with split:
                        m = vdot(node)
                        neg = b.fneg(m)
                        lo1 = b.select(b.fcmp_ordered("<", d, m), d, m)
                        lo0 = b.select(b.fcmp_ordered("<", d, neg), d, neg)
                        push(lo1, b.sext(word(node, const_i64(2)), I64))
                        push(lo0, b.sext(word(node, one), I64))

    f.loop(lambda: b.and_(b.icmp_signed(">", f.get(size), zero),
                          b.icmp_signed("<", f.get(count), a["search_k"])), step)
    b.ret(f.get(nout))
    return str(module)


def get_kernel() -> Any:
    """The compiled traversal, or None (then the Python traversal is used)."""
    global _fn
    with _lock:
        if _fn is None:
            try:
                from embedpipe.codegen.isa import detect_isa
                from embedpipe.codegen.jit import compile_object, host_engine
                obj = compile_object(search_ir(), detect_isa())
                _fn = _SIG(host_engine().load(obj, ["ep_annoy_search"])["ep_annoy_search"])
            except Exception as exc:
                log.warning("annoy JIT kernel unavailable (%s); using Python traversal", exc)
                _fn = False
        return _fn or None


class AnnoyScratch:
    """Per-thread heap, visited tags and candidate buffers for one index."""

    def __init__(self, n_nodes: int, n_items: int) -> None:
        self.hp = np.empty(n_nodes + 8, np.float32)
        self.hi = np.empty(n_nodes + 8, np.int32)
        self.visited = np.zeros(n_items, np.int32)
        self.tag = 0
        self.out_id = np.empty(0, np.int32)
        self.out_s = np.empty(0, np.float32)

    def run(self, fn: Any, nodes: np.ndarray, dim: int, n_items: int, roots: np.ndarray,
            q: np.ndarray, search_k: int, K: int) -> tuple[np.ndarray, np.ndarray]:
        need = min(n_items, search_k + K)
        if len(self.out_id) < need:
            self.out_id = np.empty(need, np.int32)
            self.out_s = np.empty(need, np.float32)
        self.tag += 1
        if self.tag >= 2**31 - 1:
            self.visited[:] = 0
            self.tag = 1
        got = fn(nodes.ctypes.data, nodes.shape[1], dim, n_items, roots.ctypes.data, len(roots),
                 q.ctypes.data, search_k, self.hp.ctypes.data, self.hi.ctypes.data,
                 self.visited.ctypes.data, self.tag, self.out_id.ctypes.data,
                 self.out_s.ctypes.data)
        return self.out_id[:got], self.out_s[:got]
