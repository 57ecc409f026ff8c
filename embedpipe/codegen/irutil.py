"""Small helpers over ``llvmlite.ir`` shared by the kernel emitters: loops, splats, intrinsics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import llvmlite.ir as ir

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
PTR = ir.PointerType()
VOID = ir.VoidType()


def vec(elem: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(elem, n)


def const_i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """Declare (once) an LLVM intrinsic or external function by name."""
    try:
        return module.get_global(name)
    except KeyError:
        return ir.Function(module, ir.FunctionType(ret, args), name=name)


def splat(b: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    """Broadcast a scalar to an ``n``-lane vector (insertelement + zero shufflevector)."""
    vt = vec(value.type, n)
    one = b.insert_element(ir.Constant(vt, None), value, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(vt, None), ir.Constant(vec(I32, n), [0] * n))


def lane_iota(n: int, elem: ir.Type = I64) -> ir.Constant:
    return ir.Constant(vec(elem, n), list(range(n)))


def gep_bytes(b: ir.IRBuilder, base: ir.Value, offset: ir.Value) -> ir.Value:
    return b.gep(base, [offset], source_etype=I8)


def load_at(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, byte_offset: ir.Value,
            align: int = 1) -> ir.Value:
    return b.load(gep_bytes(b, base, byte_offset), typ=ty, align=align)


def store_at(b: ir.IRBuilder, value: ir.Value, base: ir.Value, byte_offset: ir.Value,
             align: int = 1) -> None:
    b.store(value, gep_bytes(b, base, byte_offset), align=align)


@contextmanager
def for_range(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int | ir.Value = 1,
              name: str = "i") -> Iterator[ir.Value]:
    """``for (i = start; i < stop; i += step)`` on i64; yields the induction variable."""
    step_v = step if isinstance(step, ir.Value) else const_i64(step)
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    exit_ = b.append_basic_block(f"{name}.exit")
    b.branch(head)
    b.position_at_end(head)
    iv = b.phi(I64, name=name)
    iv.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", iv, stop), body, exit_)
    b.position_at_end(body)
    yield iv
    nxt = b.add(iv, step_v, name=f"{name}.next")
    iv.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(exit_)


def imin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def fmuladd(b: ir.IRBuilder, module: ir.Module, x: ir.Value, y: ir.Value,
            z: ir.Value) -> ir.Value:
    """``x*y+z``, fused where the target has FMA (``llvm.fmuladd`` never becomes a libcall)."""
    n = x.type.count
    fn = intrinsic(module, f"llvm.fmuladd.v{n}f32", x.type, [x.type] * 3)
    return b.call(fn, [x, y, z])


def masked_store_f32(b: ir.IRBuilder, module: ir.Module, value: ir.Value, ptr: ir.Value,
                     remaining: ir.Value) -> None:
    """Store the first ``remaining`` lanes of an f32 vector (ragged right edge of Y)."""
    n = value.type.count
    mask = b.icmp_signed("<", lane_iota(n), splat(b, remaining, n))
    fn = intrinsic(module, f"llvm.masked.store.v{n}f32.p0", VOID,
                   [value.type, PTR, I32, vec(I1, n)])
    b.call(fn, [value, ptr, ir.Constant(I32, 4), mask])


def new_function(module: ir.Module, name: str, args: list[tuple[str, ir.Type]]
                 ) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(module, ir.FunctionType(VOID, [t for _, t in args]), name=name)
    for arg, (arg_name, _) in zip(fn.args, args):
        arg.name = arg_name
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    fn.attributes.add("nounwind")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _halving_reduce(b: ir.IRBuilder, v: ir.Value, combine) -> ir.Value:
    """Fold a vector to lane 0 by combining its halves (no reduction intrinsic, lowers anywhere)."""
    n = v.type.count
    while n > 1:
        half = n // 2
        lo = b.shuffle_vector(v, v, ir.Constant(vec(I32, half), list(range(half))))
        hi = b.shuffle_vector(v, v, ir.Constant(vec(I32, half), list(range(half, n))))
        v = combine(lo, hi)
        n = half
    return b.extract_element(v, ir.Constant(I32, 0))


def hmax_tree(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Horizontal max of a float vector by halving."""
    return _halving_reduce(b, v, lambda lo, hi: b.select(b.fcmp_ordered(">", lo, hi), lo, hi))


def hsum_tree(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Horizontal sum of a float vector by halving (pairwise, so error grows like log n)."""
    return _halving_reduce(b, v, b.fadd)


def store_tile(b: ir.IRBuilder, module: ir.Module, slots, t: ir.Value, p: ir.Value, T: ir.Value,
               N: ir.Value, y: ir.Value, ldy: ir.Value, nr: int, lanes: int) -> None:
    """Write an MR×NV tile of accumulator slots to Y rows t.., columns p·nr.., masking past T and N."""
    for r, row_slots in enumerate(slots):
        row = b.add(t, const_i64(r))
        with b.if_then(b.icmp_signed("<", row, T)):
            for v, slot in enumerate(row_slots):
                col = b.add(b.mul(p, const_i64(nr)), const_i64(v * lanes))
                rem = b.sub(N, col)
                with b.if_then(b.icmp_signed(">", rem, const_i64(0))):
                    ptr = b.gep(y, [b.add(b.mul(row, ldy), col)], source_etype=F32)
                    masked_store_f32(b, module, b.load(slot), ptr, rem)
