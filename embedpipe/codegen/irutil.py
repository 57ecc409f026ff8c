"""The one set of ``llvmlite.ir`` helpers every kernel emitter builds with.

Structured code as context managers over an ``IRBuilder``: ``for_range`` (counted loop, phi
induction variable) and ``loop`` (``while (true)`` left with ``break_unless`` / ``break_if``,
re-entered with ``continue_if``), and ``sweep`` (fp32 vectors, then a one-element tail) over
a range; mutable scalars are stack slots from ``var`` that LLVM's
mem2reg promotes to registers.  Plus typed element access, splats, reductions, intrinsics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

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


def on_one_lane(b: ir.IRBuilder, fn: Callable[..., ir.Value], *scalars: ir.Value) -> ir.Value:
    """``fn`` of one-lane vectors holding ``scalars``, as a scalar: the scalar tail of a row
    sweep runs the same vector code (and so the same arithmetic) as its body."""
    lane0 = ir.Constant(I32, 0)
    ones = [b.insert_element(ir.Constant(vec(s.type, 1), None), s, lane0) for s in scalars]
    return b.extract_element(fn(*ones), lane0)


def lane_iota(n: int, elem: ir.Type = I64) -> ir.Constant:
    return ir.Constant(vec(elem, n), list(range(n)))


def gep_bytes(b: ir.IRBuilder, base: ir.Value, offset: ir.Value) -> ir.Value:
    return b.gep(base, [offset], source_etype=I8)


def load_at(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, byte_offset: ir.Value, align: int = 1) -> ir.Value:
    return b.load(gep_bytes(b, base, byte_offset), typ=ty, align=align)


def store_at(b: ir.IRBuilder, value: ir.Value, base: ir.Value, byte_offset: ir.Value, align: int = 1) -> None:
    b.store(value, gep_bytes(b, base, byte_offset), align=align)


@contextmanager
def for_range(
    b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int | ir.Value = 1, name: str = "i"
) -> Iterator[ir.Value]:
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


def sweep(
    b: ir.IRBuilder,
    start: ir.Value,
    stop: ir.Value,
    width: int,
    body: Callable[[ir.Type, ir.Value], None],
    tag: str = "v",
    tail: ir.Type | None = None,
) -> None:
    """``body(ty, i)`` for every ``i`` in ``[start, stop)``: ``width``-lane fp32 vectors first
    (``ty`` is ``vec(F32, width)``), then the remainder one element at a time (``ty`` is
    ``tail``: ``vec(F32, 1)`` by default, ``F32`` for a body written for scalars)."""
    vstop = b.sub(stop, b.srem(b.sub(stop, start), const_i64(width)))
    with for_range(b, start, vstop, width, tag) as i:
        body(vec(F32, width), i)
    with for_range(b, vstop, stop, 1, tag + "t") as i:
        body(vec(F32, 1) if tail is None else tail, i)


@dataclass
class Loop:
    """Exits of the innermost ``loop``: each helper branches away and continues in a new block."""

    b: ir.IRBuilder
    head: ir.Block
    exit: ir.Block

    def _branch_if(self, cond: ir.Value, target: ir.Block) -> None:
        rest = self.b.append_basic_block(f"{self.head.name}.rest")
        self.b.cbranch(cond, target, rest)
        self.b.position_at_end(rest)

    def break_if(self, cond: ir.Value) -> None:
        self._branch_if(cond, self.exit)

    def break_unless(self, cond: ir.Value) -> None:
        """The loop condition of a ``while``: leave when ``cond`` is false."""
        self._branch_if(self.b.not_(cond), self.exit)

    def continue_if(self, cond: ir.Value) -> None:
        self._branch_if(cond, self.head)


@contextmanager
def loop(b: ir.IRBuilder, name: str = "loop") -> Iterator[Loop]:
    """``while (true) { body }``; the body leaves through the yielded :class:`Loop`."""
    head = b.append_basic_block(f"{name}.head")
    exit_ = b.append_basic_block(f"{name}.exit")
    b.branch(head)
    b.position_at_end(head)
    yield Loop(b, head, exit_)
    if not b.block.is_terminated:
        b.branch(head)
    b.position_at_end(exit_)


def var(b: ir.IRBuilder, ty: ir.Type, init: ir.Value) -> ir.AllocaInstr:
    """A mutable local: a stack slot in the entry block (promoted to a register by mem2reg)."""
    with b.goto_entry_block():
        slot = b.alloca(ty)
    b.store(init, slot)
    return slot


def bump(b: ir.IRBuilder, slot: ir.Value, by: ir.Value | int = 1) -> ir.Value:
    """``*slot += by`` for an i64 slot; returns the old value."""
    old = b.load(slot)
    b.store(b.add(old, by if isinstance(by, ir.Value) else const_i64(by)), slot)
    return old


def elem_ptr(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, idx: ir.Value) -> ir.Value:
    return b.gep(base, [idx], source_etype=ty)


def load_elem(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, idx: ir.Value) -> ir.Value:
    return b.load(elem_ptr(b, ty, base, idx), typ=ty)


def store_elem(b: ir.IRBuilder, ty: ir.Type, base: ir.Value, idx: ir.Value, value: ir.Value) -> None:
    b.store(value, elem_ptr(b, ty, base, idx))


def insert_sorted(
    b: ir.IRBuilder,
    pos: ir.Value,
    low: ir.Value,
    score: ir.Value,
    scores: ir.Value,
    payload: Sequence[tuple[ir.Type, ir.Value, ir.Value]],
) -> ir.Value:
    """Insert ``score`` into the descending fp32 run ``scores[low..pos]``.

    Entries below ``score`` move one slot down (the one at ``pos`` is overwritten; equal ones
    stay ahead); each ``(type, array, value)`` of ``payload`` moves alongside and gets
    ``value`` in the freed slot.  Returns that slot.
    """
    p = var(b, I64, pos)
    with loop(b, "ins") as lp:
        cur = b.load(p)
        lp.break_unless(b.icmp_signed(">", cur, low))
        prev = b.sub(cur, const_i64(1))
        above = load_elem(b, F32, scores, prev)
        lp.break_if(b.fcmp_ordered(">=", above, score))
        store_elem(b, F32, scores, cur, above)
        for ty, arr, _ in payload:
            store_elem(b, ty, arr, cur, load_elem(b, ty, arr, prev))
        b.store(prev, p)
    slot = b.load(p)
    store_elem(b, F32, scores, slot, score)
    for ty, arr, value in payload:
        store_elem(b, ty, arr, slot, value)
    return slot


def round_up(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return -(-x // m) * m


def round_up_value(b: ir.IRBuilder, x: ir.Value, m: int) -> ir.Value:
    """``x`` (i64, not negative) rounded up to a multiple of ``m`` in the emitted code."""
    return b.mul(b.sdiv(b.add(x, const_i64(m - 1)), const_i64(m)), const_i64(m))


def imin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def fmuladd(b: ir.IRBuilder, module: ir.Module, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """``x*y+z``, fused where the target has FMA (``llvm.fmuladd`` never becomes a libcall)."""
    n = x.type.count
    fn = intrinsic(module, f"llvm.fmuladd.v{n}f32", x.type, [x.type] * 3)
    return b.call(fn, [x, y, z])


def masked_store_f32(b: ir.IRBuilder, module: ir.Module, value: ir.Value, ptr: ir.Value, remaining: ir.Value) -> None:
    """Store the first ``remaining`` lanes of an f32 vector (ragged right edge of Y)."""
    n = value.type.count
    mask = b.icmp_signed("<", lane_iota(n), splat(b, remaining, n))
    fn = intrinsic(module, f"llvm.masked.store.v{n}f32.p0", VOID, [value.type, PTR, I32, vec(I1, n)])
    b.call(fn, [value, ptr, ir.Constant(I32, 4), mask])


def new_function(
    module: ir.Module, name: str, args: Sequence[tuple[str, ir.Type]], ret: ir.Type = VOID
) -> tuple[ir.Function, ir.IRBuilder]:
    """A function with named arguments (pointers ``noalias``) and its entry block."""
    fn = ir.Function(module, ir.FunctionType(ret, [t for _, t in args]), name=name)
    for arg, (arg_name, _) in zip(fn.args, args):
        arg.name = arg_name
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    fn.attributes.add("nounwind")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def transpose_square(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose ``w`` vectors of ``w`` lanes (w a power of two): out[c][i] = rows[i][c].

    For each bit s of a lane number, smallest first, the off-diagonal s × s blocks of every
    2s × 2s block swap places (two shuffles per row pair).
    """
    w = len(rows)
    rows = list(rows)
    s = 1
    while s < w:
        lo = ir.Constant(vec(I32, w), [c if not c & s else w + c - s for c in range(w)])
        hi = ir.Constant(vec(I32, w), [c + s if not c & s else w + c for c in range(w)])
        for i in range(w):
            if not i & s:
                a, c = rows[i], rows[i + s]
                rows[i], rows[i + s] = b.shuffle_vector(a, c, lo), b.shuffle_vector(a, c, hi)
        s *= 2
    return rows


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


class RowSums:
    """A running fp32 sum over the elements a ``sweep`` visits: ``width`` lanes for the vectors,
    one for the tail, each a stack slot (``zero`` before a row, ``total`` after it)."""

    def __init__(self, b: ir.IRBuilder, width: int) -> None:
        self.b, self.width = b, width
        self._lanes = b.alloca(vec(F32, width))
        self._tail = b.alloca(F32)

    def zero(self) -> None:
        self.b.store(ir.Constant(vec(F32, self.width), None), self._lanes)
        self.b.store(ir.Constant(F32, 0.0), self._tail)

    def add(self, ty: ir.Type, value: ir.Value) -> None:
        """Add ``value`` of the sweep's type ``ty`` (the vector, ``vec(F32, 1)`` or ``F32``)."""
        b = self.b
        if isinstance(ty, ir.VectorType) and ty.count == self.width:
            b.store(b.fadd(b.load(self._lanes), value), self._lanes)
            return
        if isinstance(ty, ir.VectorType):
            value = b.extract_element(value, const_i64(0))
        b.store(b.fadd(b.load(self._tail), value), self._tail)

    def total(self) -> ir.Value:
        return self.b.fadd(hsum_tree(self.b, self.b.load(self._lanes)), self.b.load(self._tail))


def store_tile(
    b: ir.IRBuilder,
    module: ir.Module,
    slots: Sequence[Sequence[ir.Value]],
    t: ir.Value,
    p: ir.Value,
    T: ir.Value,
    N: ir.Value,
    y: ir.Value,
    ldy: ir.Value,
    nr: int,
    lanes: int,
) -> None:
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
