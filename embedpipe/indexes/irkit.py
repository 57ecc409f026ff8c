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


def emit_dot(module: ir.Module, elt: ir.Type) -> ir.Function:
    """internal float dot(ptr X, ptr scale, i64 d, ptr q, i64 row), always inlined."""
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, PTR, I64, PTR, I64]), name="ep_dot")
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    X, scale, d, q, row = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    base = b.gep(X, [b.mul(row, d)], source_etype=elt)
    pre = b.block
    loop, done = fn.append_basic_block("k"), fn.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    j = b.phi(I64)
    acc = b.phi(vec(F32, LANES))
    j.add_incoming(const_i64(0), pre)
    acc.add_incoming(ir.Constant(vec(F32, LANES), None), pre)
    xv = b.load(b.gep(base, [j], source_etype=elt), typ=vec(elt, LANES), align=1)
    if elt is not F32:
        xv = b.sitofp(xv, vec(F32, LANES))
    qv = b.load(b.gep(q, [j], source_etype=F32), typ=vec(F32, LANES), align=4)
    acc2 = fmuladd(b, module, xv, qv, acc)
    j2 = b.add(j, const_i64(LANES))
    j.add_incoming(j2, loop)
    acc.add_incoming(acc2, loop)
    b.cbranch(b.icmp_signed("<", j2, d), loop, done)
    b.position_at_end(done)
    red = intrinsic(module, f"llvm.vector.reduce.fadd.v{LANES}f32", F32, [F32, vec(F32, LANES)])
    s = b.call(red, [ir.Constant(F32, 0.0), acc2], fastmath=("reassoc",))
    if elt is not F32:
        s = b.fmul(s, b.load(b.gep(scale, [row], source_etype=F32), typ=F32))
    b.ret(s)
    return fn


