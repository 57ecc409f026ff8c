"""Fused row kernels: the element-wise work between matmuls folded into as few native calls as
possible, as model-agnostic building blocks.

* ``q8work_addnorm``: (optional residual ``x' = x + rms(y)·w_post``, written once) →
  ``h = rms(x')·w_pre`` → Q8_0 activation quantization → int8 matmul, in one task per thread.
* ``q8work_gelu``: ``gelu_tanh(a)·b`` of the two halves of a (T, 2K) row → quantization →
  int8 matmul.
* ``q8work_bias_gelu``: exact (erf) GELU of a row plus a bias → quantization → int8 matmul
  (the FFN of a post-LayerNorm encoder).
* ``q8work_residual_norm``: a post-LayerNorm encoder's residual LayerNorm (written once),
  optionally extended by the residuals of selected blocks (``encoder_fused``) → quantization
  → int8 matmul: the LayerNorm output never makes a round trip through memory as fp32.

Every row is computed by the same instruction sequence whatever its index, the number of
rows, or the thread that runs it: a text gives bit-identical values in any batch.  The row
sweeps (``ir_rows.Rows``) use ``2·lanes`` fp32 vectors plus a scalar tail, and every RMS norm
here is ``ir_elementwise.inv_rms``, the standalone kernel's own sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from embedpipe.codegen import ir_q8, ir_quantize
from embedpipe.codegen.ir_elementwise import gelu_tanh_mul_value
from embedpipe.codegen.ir_encoder import ResidualNormRow, gelu_erf_value
from embedpipe.codegen.ir_q8 import QK, IntTile, act_elem_bytes
from embedpipe.codegen.ir_rows import Rows, row_at
from embedpipe.codegen.irutil import (
    F32,
    I64,
    PTR,
    const_i64,
    for_range,
    load_at,
    new_function,
    store_at,
)
from embedpipe.codegen.isa import IsaSpec

# Arguments of the matmul half of a fused work kernel (after the prologue's own).
_WORK_TAIL = [
    ("xq", PTR),
    ("xd", PTR),
    ("xc", PTR),
    ("T", I64),
    ("K", I64),
    ("qa", I64),
    ("qb", I64),
    ("wq", PTR),
    ("wd", PTR),
    ("out", PTR),
    ("N", I64),
    ("ldy", I64),
    ("a", I64),
    ("b", I64),
    ("p0", I64),
    ("p1", I64),
]
ADDNORM_PARAMS = [
    ("x", PTR),
    ("y", PTR),
    ("w_post", PTR),
    ("x_out", PTR),
    ("w_pre", PTR),
    ("eps", F32),
    ("write_x", I64),
    *_WORK_TAIL,
]
GELU_PARAMS = [("gu", PTR), *_WORK_TAIL]
BIAS_GELU_PARAMS = [("y", PTR), ("bias", PTR), *_WORK_TAIL]
RESIDUAL_NORM_PARAMS = [
    ("x", PTR),
    ("bias", PTR),
    ("res", PTR),
    ("w", PTR),
    ("beta", PTR),
    ("x_out", PTR),
    ("sel", PTR),
    ("nsel", I64),
    ("eps", F32),
    *_WORK_TAIL,
]
Prologue = Callable[[ir.IRBuilder, ir.Module, Rows, dict[str, ir.Value], ir.Value, ir.Value], None]


def _emit_work(
    m: ir.Module,
    isa: IsaSpec,
    tile: IntTile,
    name: str,
    params,
    prologue: Prologue,
    setup: Callable[[ir.IRBuilder], None] | None = None,
) -> str:
    """A work kernel: for activation rows ``[qa, qb)`` run ``prologue`` into a K-float row
    scratch and quantize it (rows ``>= T`` are zero-filled), then multiply rows ``[a, b)`` by
    weight panels ``[p0, p1)`` (see ``ir_q8.emit_work``). ``setup(b)`` runs first, in the
    entry block (the prologue's own allocas)."""
    quantize = m.get_global(ir_quantize.quantize_symbol(isa))
    matmul = m.get_global(ir_q8.matmul_symbol(isa, tile))
    fn, b = new_function(m, name, params)
    if setup is not None:
        setup(b)
    a = {pname: arg for (pname, _), arg in zip(params, fn.args)}
    K = a["K"]
    rows = Rows(b, m, 2 * isa.lanes)
    # an opaque pointer, so byte-offset stores of any vector width type-check
    scratch = b.inttoptr(b.ptrtoint(b.alloca(F32, size=K), I64), PTR)
    eb = act_elem_bytes(isa)
    nb = b.sdiv(K, const_i64(QK))
    with for_range(b, a["qa"], a["qb"], 1, "qrow") as r:
        xq = row_at(b, a["xq"], r, b.mul(K, const_i64(eb)))
        xd = row_at(b, a["xd"], r, b.mul(nb, const_i64(4)))
        xc = row_at(b, a["xc"], r, b.mul(nb, const_i64(4)))
        real = b.icmp_signed("<", r, a["T"])
        with b.if_then(real):
            prologue(b, m, rows, a, r, scratch)
        count = b.select(real, const_i64(1), const_i64(0))  # quantize's T: 0 zero-fills the padding row
        b.call(quantize, [scratch, xq, xd, xc, count, K, const_i64(0), const_i64(1)])
    b.call(
        matmul,
        [
            a["wq"],
            a["wd"],
            a["xq"],
            a["xd"],
            a["xc"],
            a["out"],
            a["T"],
            a["N"],
            K,
            a["ldy"],
            a["a"],
            a["b"],
            a["p0"],
            a["p1"],
        ],
    )
    b.ret_void()
    return name


def addnorm_work_symbol(isa: IsaSpec, tile: IntTile) -> str:
    return f"ep_q8work_addnorm_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_addnorm_work(m: ir.Module, isa: IsaSpec, tile: IntTile) -> str:
    """``q8work_addnorm(x, y, w_post, x_out, w_pre, eps, write_x, <work tail>)``.

    With ``y`` non-null: ``x' = x + rms(y)·w_post`` (stored to ``x_out`` when ``write_x``),
    else ``x' = x``; then ``rms(x')·w_pre`` is quantized and multiplied.
    """

    def prologue(b, m, rows: Rows, a, r, scratch) -> None:
        K, eps = a["K"], a["eps"]
        rb = b.mul(K, const_i64(4))
        x, x_out = row_at(b, a["x"], r, rb), row_at(b, a["x_out"], r, rb)
        has_y = b.icmp_unsigned("!=", b.ptrtoint(a["y"], I64), const_i64(0))
        write = b.icmp_signed("!=", a["write_x"], const_i64(0))
        with b.if_else(has_y) as (residual, plain):
            with residual:
                y = row_at(b, a["y"], r, rb)
                inv_y = rows.inv_rms(y, K, eps, "ry")

                def add(ty, off):
                    s = b.fmul(
                        b.fmul(load_at(b, ty, y, off, 4), rows.splat(ty, inv_y)), load_at(b, ty, a["w_post"], off, 4)
                    )
                    store_at(b, b.fadd(load_at(b, ty, x, off, 4), s), scratch, off, 4)

                rows.sweep(K, add, "add")
                with b.if_then(write):
                    rows.sweep(K, lambda ty, off: store_at(b, load_at(b, ty, scratch, off, 4), x_out, off, 4), "wx")
            with plain:
                rows.sweep(K, lambda ty, off: store_at(b, load_at(b, ty, x, off, 4), scratch, off, 4), "cp")
        inv = rows.inv_rms(scratch, K, eps, "rx")

        def norm(ty, off):
            v = b.fmul(b.fmul(load_at(b, ty, scratch, off, 4), rows.splat(ty, inv)), load_at(b, ty, a["w_pre"], off, 4))
            store_at(b, v, scratch, off, 4)

        rows.sweep(K, norm, "nx")

    return _emit_work(m, isa, tile, addnorm_work_symbol(isa, tile), ADDNORM_PARAMS, prologue)


def gelu_work_symbol(isa: IsaSpec, tile: IntTile) -> str:
    return f"ep_q8work_gelu_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_gelu_work(m: ir.Module, isa: IsaSpec, tile: IntTile) -> str:
    """``q8work_gelu(gu, <work tail>)``: row ``r`` of ``gu`` (T, 2K) gives
    ``gelu_tanh(gu[r, :K])·gu[r, K:]``, quantized and multiplied."""

    def prologue(b, m, rows: Rows, a, r, scratch) -> None:
        K = a["K"]
        rb = b.mul(K, const_i64(4))
        gate = row_at(b, a["gu"], r, b.mul(rb, const_i64(2)))
        up = b.gep(gate, [rb], source_etype=ir.IntType(8))

        def body(ty, off):
            g, u = load_at(b, ty, gate, off, 4), load_at(b, ty, up, off, 4)
            store_at(b, gelu_tanh_mul_value(b, m, isa, g, u), scratch, off, 4)

        rows.sweep(K, body, "gelu")

    return _emit_work(m, isa, tile, gelu_work_symbol(isa, tile), GELU_PARAMS, prologue)


def bias_gelu_work_symbol(isa: IsaSpec, tile: IntTile) -> str:
    return f"ep_q8work_bias_gelu_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_bias_gelu_work(m: ir.Module, isa: IsaSpec, tile: IntTile) -> str:
    """``q8work_bias_gelu(y, bias, <work tail>)``: row ``r`` of ``y`` (T, K) gives
    ``gelu_erf(y[r] + bias)`` (the exact GELU, ``ir_encoder``), quantized and multiplied."""

    def prologue(b, m, rows: Rows, a, r, scratch) -> None:
        src = row_at(b, a["y"], r, b.mul(a["K"], const_i64(4)))

        def body(ty, off):
            v = b.fadd(load_at(b, ty, src, off, 4), load_at(b, ty, a["bias"], off, 4))
            store_at(b, gelu_erf_value(b, m, isa, v), scratch, off, 4)

        rows.sweep(a["K"], body, "bgelu")

    return _emit_work(m, isa, tile, bias_gelu_work_symbol(isa, tile), BIAS_GELU_PARAMS, prologue)


def residual_norm_work_symbol(isa: IsaSpec, tile: IntTile) -> str:
    return f"ep_q8work_residual_norm_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_residual_norm_work(m: ir.Module, isa: IsaSpec, tile: IntTile) -> str:
    """``q8work_residual_norm(x, bias, res, w, beta, x_out, sel, nsel, eps, <work tail>)``.

    Row ``r``: ``x_out[r] = LayerNorm(x[r] + bias + res[r])·w + beta`` (rows of
    ``D = K − 32·nsel``), then that row extended by the residuals of the ``nsel`` blocks
    numbered in ``sel`` (K values) is quantized and multiplied: the same values as the
    ``residual_norm`` kernel's ``out`` and ``ext`` rows.
    """
    norm: list[ResidualNormRow] = []

    def prologue(b, m, rows: Rows, a, r, scratch) -> None:
        D = b.sub(a["K"], b.mul(a["nsel"], const_i64(QK)))
        rb = b.mul(D, const_i64(4))
        x_out = row_at(b, a["x_out"], r, rb)
        norm[0].emit(
            row_at(b, a["x"], r, rb), a["bias"], row_at(b, a["res"], r, rb), a["w"], a["beta"], x_out, D, a["eps"]
        )
        norm[0].extend(x_out, scratch, a["sel"], a["nsel"], D)

    return _emit_work(
        m,
        isa,
        tile,
        residual_norm_work_symbol(isa, tile),
        RESIDUAL_NORM_PARAMS,
        prologue,
        setup=lambda b: norm.append(ResidualNormRow(b, isa)),
    )
