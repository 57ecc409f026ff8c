"""Fused row kernels without a product: the element-wise work of a layer that no matmul
consumes directly, and the row sweeps every fused kernel (``ir_fused``) is written with.

* ``qk_norm_rope``: per-head RMS norm of the query and key heads of a packed (T, Q|K|V) row,
  NeoX rotary embedding (rotate halves) from per-row cos/sin tables, V copied out.
* ``add_norm``: ``out = rms(x + rms(y)·w_post)·w`` (the last residual and the output norm).

As in ``ir_fused``, every row is computed by the same instruction sequence whatever its index,
the number of rows or the thread that runs it, and every RMS norm is ``ir_elementwise.inv_rms``.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from embedpipe.codegen.ir_elementwise import inv_rms
from embedpipe.codegen.irutil import (
    F32,
    I64,
    PTR,
    RowSums,
    const_i64,
    for_range,
    load_at,
    new_function,
    splat,
    store_at,
    sweep,
)
from embedpipe.codegen.isa import IsaSpec

QK_NORM_ROPE_PARAMS = [
    ("qkv", PTR),
    ("q", PTR),
    ("k", PTR),
    ("v", PTR),
    ("qw", PTR),
    ("kw", PTR),
    ("cos", PTR),
    ("sin", PTR),
    ("Hq", I64),
    ("Hkv", I64),
    ("D", I64),
    ("Dv", I64),
    ("eps", F32),
    ("r0", I64),
    ("r1", I64),
]
ADD_NORM_PARAMS = [
    ("x", PTR),
    ("y", PTR),
    ("w_post", PTR),
    ("w", PTR),
    ("out", PTR),
    ("D", I64),
    ("eps", F32),
    ("r0", I64),
    ("r1", I64),
]


class Rows:
    """Vector sweeps over one row of ``n`` fp32 values (``width`` lanes, then a scalar tail),
    with byte offsets for the body."""

    def __init__(self, b: ir.IRBuilder, m: ir.Module, width: int) -> None:
        self.b, self.m, self.width = b, m, width
        self._sums = RowSums(b, width)

    def sweep(self, n: ir.Value, body: Callable[[ir.Type, ir.Value], None], tag: str) -> None:
        """``body(ty, byte_offset)`` over the row: ``ty`` is the vector type, then F32."""
        b = self.b
        sweep(b, const_i64(0), n, self.width, lambda ty, i: body(ty, b.mul(i, const_i64(4))), tag, F32)

    def splat(self, ty: ir.Type, x: ir.Value) -> ir.Value:
        return x if ty is F32 else splat(self.b, x, self.width)

    def inv_rms(self, src: ir.Value, n: ir.Value, eps: ir.Value, tag: str) -> ir.Value:
        """``1 / sqrt(Σ src[i]² / n + eps)``, as ``ir_elementwise.rms_norm`` computes it."""
        return inv_rms(self.b, self._sums, src, n, eps, tag)


def row_at(b: ir.IRBuilder, base: ir.Value, row: ir.Value, row_bytes: ir.Value) -> ir.Value:
    return b.gep(base, [b.mul(row, row_bytes)], source_etype=ir.IntType(8))


def qk_norm_rope_symbol(isa: IsaSpec) -> str:
    return f"ep_qk_norm_rope_{isa.name}"


def emit_qk_norm_rope(m: ir.Module, isa: IsaSpec) -> str:
    """``qk_norm_rope(qkv, q, k, v, qw, kw, cos, sin, Hq, Hkv, D, Dv, eps, r0, r1)``.

    Rows ``[r0, r1)`` of ``qkv`` (R, Hq·D + Hkv·D + Hkv·Dv): each query head becomes
    ``rope(rms(head)·qw)`` in ``q`` (R, Hq, D), each key head ``rope(rms(head)·kw)`` in ``k``;
    the values are copied to ``v`` (R, Hkv, Dv).  ``cos``/``sin`` are (R, D/2) per row:
    ``lo' = lo·c − hi·s``, ``hi' = hi·c + lo·s`` for the halves ``lo``, ``hi`` of a head.
    """
    name = qk_norm_rope_symbol(isa)
    fn, b = new_function(m, name, QK_NORM_ROPE_PARAMS)
    a = {pname: arg for (pname, _), arg in zip(QK_NORM_ROPE_PARAMS, fn.args)}
    D, Hq, Hkv, Dv, eps = a["D"], a["Hq"], a["Hkv"], a["Dv"], a["eps"]
    rows = Rows(b, m, 2 * isa.lanes)
    half = b.sdiv(D, const_i64(2))
    hb = b.mul(half, const_i64(4))
    db = b.mul(D, const_i64(4))
    row_elems = b.add(b.mul(b.add(Hq, Hkv), D), b.mul(Hkv, Dv))
    i8 = ir.IntType(8)
    with for_range(b, a["r0"], a["r1"], 1, "row") as r:
        src = row_at(b, a["qkv"], r, b.mul(row_elems, const_i64(4)))
        cos, sin = row_at(b, a["cos"], r, hb), row_at(b, a["sin"], r, hb)
        for tag, heads, first, weight, dst_base in (
            ("q", Hq, const_i64(0), a["qw"], a["q"]),
            ("k", Hkv, Hq, a["kw"], a["k"]),
        ):
            dst_row = row_at(b, dst_base, r, b.mul(heads, db))
            with for_range(b, const_i64(0), heads, 1, f"{tag}h") as h:
                head = b.gep(src, [b.mul(b.add(first, h), db)], source_etype=i8)
                dst = b.gep(dst_row, [b.mul(h, db)], source_etype=i8)
                inv = rows.inv_rms(head, D, eps, f"{tag}rms")

                def rope(ty, off, head=head, dst=dst, inv=inv, weight=weight):
                    s = rows.splat(ty, inv)
                    lo = b.fmul(b.fmul(load_at(b, ty, head, off, 4), s), load_at(b, ty, weight, off, 4))
                    off_hi = b.add(off, hb)
                    hi = b.fmul(b.fmul(load_at(b, ty, head, off_hi, 4), s), load_at(b, ty, weight, off_hi, 4))
                    c, sn = load_at(b, ty, cos, off, 4), load_at(b, ty, sin, off, 4)
                    store_at(b, b.fsub(b.fmul(lo, c), b.fmul(hi, sn)), dst, off, 4)
                    store_at(b, b.fadd(b.fmul(hi, c), b.fmul(lo, sn)), dst, off_hi, 4)

                rows.sweep(half, rope, f"{tag}rope")
        vsrc = b.gep(src, [b.mul(b.add(Hq, Hkv), db)], source_etype=i8)
        vn = b.mul(Hkv, Dv)
        vdst = row_at(b, a["v"], r, b.mul(vn, const_i64(4)))
        rows.sweep(vn, lambda ty, off: store_at(b, load_at(b, ty, vsrc, off, 4), vdst, off, 4), "vcopy")
    b.ret_void()
    return name


def add_norm_symbol(isa: IsaSpec) -> str:
    return f"ep_add_norm_{isa.name}"


def emit_add_norm(m: ir.Module, isa: IsaSpec) -> str:
    """``add_norm(x, y, w_post, w, out, D, eps, r0, r1)``: rows ``[r0, r1)`` of
    ``out = rms(x + rms(y)·w_post)·w`` (``out`` holds the sum in between)."""
    name = add_norm_symbol(isa)
    fn, b = new_function(m, name, ADD_NORM_PARAMS)
    a = {pname: arg for (pname, _), arg in zip(ADD_NORM_PARAMS, fn.args)}
    D, eps = a["D"], a["eps"]
    rows = Rows(b, m, 2 * isa.lanes)
    rb = b.mul(D, const_i64(4))
    with for_range(b, a["r0"], a["r1"], 1, "row") as r:
        x, y, out = (row_at(b, a[n], r, rb) for n in ("x", "y", "out"))
        inv_y = rows.inv_rms(y, D, eps, "ry")

        def add(ty, off):
            s = b.fmul(b.fmul(load_at(b, ty, y, off, 4), rows.splat(ty, inv_y)), load_at(b, ty, a["w_post"], off, 4))
            store_at(b, b.fadd(load_at(b, ty, x, off, 4), s), out, off, 4)

        rows.sweep(D, add, "add")
        inv = rows.inv_rms(out, D, eps, "rx")

        def norm(ty, off):
            v = b.fmul(b.fmul(load_at(b, ty, out, off, 4), rows.splat(ty, inv)), load_at(b, ty, a["w"], off, 4))
            store_at(b, v, out, off, 4)

        rows.sweep(D, norm, "nx")
    b.ret_void()
    return name
