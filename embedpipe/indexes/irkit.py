"""Shared llvmlite IR building blocks for the index kernels (search loops, not matmuls).

`Fn` gives structured code (stack variables that mem2reg promotes, while-loops with break /
continue, typed element pointers); `emit_dot` is the 16-lane fused multiply-add row dot that
every index kernel scores vectors with.
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen.irutil import F32, I64, PTR, const_i64, fmuladd, intrinsic, vec

LANES = 16


class Fn:
    """Tiny structured-code helper: stack variables and while/if blocks over an IRBuilder."""

    def __init__(self, b: ir.IRBuilder) -> None:
        self.b = b

    def var(self, ty: ir.Type, init: ir.Value) -> ir.Value:
        with self.b.goto_entry_block():
            slot = self.b.alloca(ty)
        self.b.store(init, slot)
        return slot

    def get(self, slot: ir.Value) -> ir.Value:
        return self.b.load(slot)

    def put(self, slot: ir.Value, v: ir.Value) -> None:
        self.b.store(v, slot)

    def loop(self, cond_fn, body_fn) -> None:
        b = self.b
        head, body, out = (b.append_basic_block(n) for n in ("w.head", "w.body", "w.out"))
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(cond_fn(), body, out)
        b.position_at_end(body)
        body_fn(out, head)
        if not b.block.is_terminated:
            b.branch(head)
        b.position_at_end(out)

    def at(self, ty: ir.Type, base: ir.Value, idx: ir.Value) -> ir.Value:
        return self.b.gep(base, [idx], source_etype=ty)


UNROLL = 4  # independent accumulators: hides FMA latency on 768-wide rows


def emit_dot(module: ir.Module, elt: ir.Type) -> ir.Function:
    """internal float dot(ptr X, ptr scale, i64 d, ptr q, i64 row), always inlined.

    Row `row` of X (elements `elt`, widened to float) times q; int rows are multiplied by
    scale[row]. d must be a positive multiple of 16: blocks of 64 go through four
    accumulators, the remaining 16-blocks through one.
    """
    vt = vec(F32, LANES)
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, PTR, I64, PTR, I64]), name="ep_dot")
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    X, scale, d, q, row = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    base = b.gep(X, [b.mul(row, d)], source_etype=elt)
    d_main = b.and_(d, const_i64(-LANES * UNROLL))
    zero_v = ir.Constant(vt, None)

    def fma(acc: ir.Value, j: ir.Value) -> ir.Value:
        xv = b.load(b.gep(base, [j], source_etype=elt), typ=vec(elt, LANES), align=1)
        if elt is not F32:
            xv = b.sitofp(xv, vt)
        qv = b.load(b.gep(q, [j], source_etype=F32), typ=vt, align=4)
        return fmuladd(b, module, xv, qv, acc)

    entry = b.block
    head, body, mid = (fn.append_basic_block(n) for n in ("m.head", "m.body", "mid"))
    thead, tbody, done = (fn.append_basic_block(n) for n in ("t.head", "t.body", "done"))
    b.branch(head)
    b.position_at_end(head)
    j = b.phi(I64)
    accs = [b.phi(vt) for _ in range(UNROLL)]
    j.add_incoming(const_i64(0), entry)
    for acc in accs:
        acc.add_incoming(zero_v, entry)
    b.cbranch(b.icmp_signed("<", j, d_main), body, mid)
    b.position_at_end(body)
    new = [fma(acc, b.add(j, const_i64(u * LANES))) for u, acc in enumerate(accs)]
    j.add_incoming(b.add(j, const_i64(LANES * UNROLL)), body)
    for acc, nv in zip(accs, new):
        acc.add_incoming(nv, body)
    b.branch(head)
    b.position_at_end(mid)
    total = b.fadd(b.fadd(accs[0], accs[1]), b.fadd(accs[2], accs[3]))
    b.branch(thead)
    b.position_at_end(thead)
    jt = b.phi(I64)
    acc_t = b.phi(vt)
    jt.add_incoming(j, mid)
    acc_t.add_incoming(total, mid)
    b.cbranch(b.icmp_signed("<", jt, d), tbody, done)
    b.position_at_end(tbody)
    nt = fma(acc_t, jt)
    jt.add_incoming(b.add(jt, const_i64(LANES)), tbody)
    acc_t.add_incoming(nt, tbody)
    b.branch(thead)
    b.position_at_end(done)
    red = intrinsic(module, f"llvm.vector.reduce.fadd.v{LANES}f32", F32, [F32, vt])
    s = b.call(red, [ir.Constant(F32, 0.0), acc_t], fastmath=("reassoc",))
    if elt is not F32:
        s = b.fmul(s, b.load(b.gep(scale, [row], source_etype=F32), typ=F32))
    b.ret(s)
    return fn
