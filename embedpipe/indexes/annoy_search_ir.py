"""IR of Annoy's best-first traversal as one native kernel (``annoy_kernel`` drives it), for
Annoy's node layout.

Mirrors Annoy's `_get_all_nns`: a max-heap of (margin bound, node) seeded with every root at
+inf; split nodes push both children with min(bound, ±margin); leaf buckets and items become
candidates until `search_k` (duplicates counted, as Annoy does) are collected. Each candidate
is scored once (u32 visited tags) as cosine = v·q / |v|. Every node, child and item id it
follows is checked against the counts it is given; a bad one ends the call with ``-Fault``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import llvmlite.ir as ir

from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    bump,
    const_i64,
    elem_ptr,
    for_range,
    intrinsic,
    load_elem,
    loop,
    store_elem,
    var,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.rowdot import emit_dot

PARAMS = [
    ("nodes", PTR),
    ("n_nodes", I64),
    ("stride", I64),
    ("f", I64),
    ("n_items", I64),
    ("roots", PTR),
    ("n_roots", I64),
    ("q", PTR),
    ("search_k", I64),
    ("hp", PTR),
    ("hi", PTR),
    ("heap_cap", I64),
    ("visited", PTR),
    ("tag", I32),
    ("out_id", PTR),
    ("out_s", PTR),
    ("out_cap", I64),
]
ONE, ZERO = const_i64(1), const_i64(0)


class Fault(enum.IntEnum):
    """Why a traversal stopped early: the kernel returns ``-fault`` instead of a count."""

    NODE = 1  # a root or split child outside the node array
    ITEM = 2  # a leaf item id outside the items
    KIND = 3  # a non-item node with fewer than one descendant
    HEAP = 4  # more pending nodes than the heap holds (a cycle in a tree)
    OUTPUT = 5  # more candidates than the output buffer holds


def stop_if(b: ir.IRBuilder, cond: ir.Value, fault: Fault) -> None:
    """A bounds check: when ``cond`` holds, return ``-fault``."""
    with b.if_then(cond, likely=False):
        b.ret(const_i64(-int(fault)))


@dataclass
class _Heap:
    """Max-heap of (priority f32 in ``hp``, node i32 in ``hi``) with ``size`` entries."""

    b: ir.IRBuilder
    hp: ir.Value
    hi: ir.Value
    size: ir.Value  # i64 slot
    cap: ir.Value  # entries ``hp`` / ``hi`` hold

    def push(self, pri: ir.Value, node: ir.Value) -> None:
        b = self.b
        stop_if(b, b.icmp_signed(">=", b.load(self.size), self.cap), Fault.HEAP)
        pos = var(b, I64, bump(b, self.size))
        with loop(b, "up") as lp:
            p = b.load(pos)
            lp.break_unless(b.icmp_signed(">", p, ZERO))
            parent = b.sdiv(b.sub(p, ONE), const_i64(2))
            above = load_elem(b, F32, self.hp, parent)
            lp.break_if(b.fcmp_ordered(">=", above, pri))
            self._move(parent, p, above)
            b.store(parent, pos)
        self._put(b.load(pos), pri, b.trunc(node, I32))

    def pop(self) -> tuple[ir.Value, ir.Value]:
        """Remove the root: (its priority, its node as i64); the last entry sifts down."""
        b = self.b
        top_p = load_elem(b, F32, self.hp, ZERO)
        top_n = b.sext(load_elem(b, I32, self.hi, ZERO), I64)
        last = b.sub(b.load(self.size), ONE)
        b.store(last, self.size)
        lp_, li = load_elem(b, F32, self.hp, last), load_elem(b, I32, self.hi, last)
        pos = var(b, I64, ZERO)
        with loop(b, "down") as lp:
            p = b.load(pos)
            left = b.add(b.mul(p, const_i64(2)), ONE)
            lp.break_unless(b.icmp_signed("<", left, last))
            right = b.add(left, ONE)
            has_r = b.icmp_signed("<", right, last)
            pl = load_elem(b, F32, self.hp, left)
            pr = load_elem(b, F32, self.hp, b.select(has_r, right, left))
            c = b.select(b.and_(has_r, b.fcmp_ordered(">", pr, pl)), right, left)
            pc = load_elem(b, F32, self.hp, c)
            lp.break_if(b.fcmp_ordered("<=", pc, lp_))
            self._move(c, p, pc)
            b.store(c, pos)
        self._put(b.load(pos), lp_, li)
        return top_p, top_n

    def _move(self, src: ir.Value, dst: ir.Value, pri: ir.Value) -> None:
        self._put(dst, pri, load_elem(self.b, I32, self.hi, src))

    def _put(self, at: ir.Value, pri: ir.Value, node: ir.Value) -> None:
        store_elem(self.b, F32, self.hp, at, pri)
        store_elem(self.b, I32, self.hi, at, node)


def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """Seed the heap with the roots, then pop until it is empty or ``search_k`` candidates
    were collected: items and leaf buckets become candidates, split nodes push children."""
    a = {name: arg for (name, _), arg in zip(PARAMS, b.function.args)}
    dot = emit_dot(b.module, F32, isa.lanes)  # dot(X, scale, d, q, row) over rows of width d
    sqrt = intrinsic(b.module, "llvm.sqrt.f32", F32, [F32])
    K = b.add(a["f"], const_i64(2))
    heap = _Heap(b, a["hp"], a["hi"], var(b, I64, ZERO), a["heap_cap"])
    count, nout = var(b, I64, ZERO), var(b, I64, ZERO)

    def word(node: ir.Value, k: ir.Value) -> ir.Value:
        return load_elem(b, I32, a["nodes"], b.add(b.mul(node, a["stride"]), k))

    def margin(node: ir.Value) -> ir.Value:
        vptr = elem_ptr(b, I32, a["nodes"], b.add(b.mul(node, a["stride"]), const_i64(3)))
        return b.call(dot, [vptr, vptr, a["f"], a["q"], ZERO])

    def node_at(node: ir.Value) -> ir.Value:
        stop_if(b, b.icmp_unsigned(">=", node, a["n_nodes"]), Fault.NODE)
        return node

    def add_candidate(item: ir.Value) -> None:
        stop_if(b, b.icmp_unsigned(">=", item, a["n_items"]), Fault.ITEM)
        with b.if_then(b.icmp_signed("!=", load_elem(b, I32, a["visited"], item), a["tag"])):
            store_elem(b, I32, a["visited"], item, a["tag"])
            stop_if(b, b.icmp_signed(">=", b.load(nout), a["out_cap"]), Fault.OUTPUT)
            norm2 = b.bitcast(word(item, ONE), F32)
            tiny = ir.Constant(F32, 1e-30)
            norm = b.call(sqrt, [b.select(b.fcmp_ordered(">", norm2, tiny), norm2, tiny)])
            k = bump(b, nout)
            store_elem(b, F32, a["out_s"], k, b.fdiv(margin(item), norm))
            store_elem(b, I32, a["out_id"], k, b.trunc(item, I32))

    with for_range(b, ZERO, a["n_roots"], 1, "seed") as t:
        heap.push(ir.Constant(F32, float("inf")), node_at(b.sext(load_elem(b, I32, a["roots"], t), I64)))
    with loop(b, "step") as lp:
        lp.break_unless(
            b.and_(b.icmp_signed(">", b.load(heap.size), ZERO), b.icmp_signed("<", b.load(count), a["search_k"]))
        )
        d, node = heap.pop()
        nd = b.sext(word(node, ZERO), I64)
        is_item = b.and_(b.icmp_signed("==", nd, ONE), b.icmp_signed("<", node, a["n_items"]))
        with b.if_else(is_item) as (then, other):
            with then:
                add_candidate(node)
                bump(b, count)
            with other:
                with b.if_else(b.icmp_signed("<=", nd, K)) as (leaf, split):
                    with leaf:
                        stop_if(b, b.icmp_signed("<", nd, ONE), Fault.KIND)
                        with for_range(b, ZERO, nd, 1, "bucket") as t:
                            add_candidate(b.sext(word(node, b.add(t, ONE)), I64))
                        bump(b, count, nd)
                    with split:
                        m = margin(node)
                        neg = b.fneg(m)
                        right, left = (node_at(b.sext(word(node, const_i64(w)), I64)) for w in (2, 1))
                        heap.push(b.select(b.fcmp_ordered("<", d, m), d, m), right)
                        heap.push(b.select(b.fcmp_ordered("<", d, neg), d, neg), left)
    b.ret(b.load(nout))
