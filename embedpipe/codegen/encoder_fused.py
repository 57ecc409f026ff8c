"""Fused row kernels of post-LayerNorm encoders, and the extension of activations by the
residuals of their worst-quantized blocks.

``residual_norm``: ``a = x + bias + res`` then LayerNorm with bias (``w``, ``beta``) into
``out``, in one pass over the rows; optionally also the *extended* rows ``ext`` (T, D + 32·S):
the normalized row, then for each of S selected 32-element blocks ``b`` its residual
``lo = v_b − hi_b``, where ``hi = round(v / d) · d`` with ``d = max|v| / 127`` is exactly what
an int8 matmul's per-32 Q8_0 quantizer makes of the block. A weight extended by the same
blocks' columns (``[W | W_sel]``, whole Q8_0 blocks, no requantization) then gives
``Q(ext)·[W | W_sel]ᵀ = Q(v)·Wᵀ + Q(lo_sel)·W_selᵀ``: the selected blocks at about 1/254 of
their quantization error, the others as plain int8, in one product over S/(D/32) more columns.
Selecting every block is the full two-level split. A few blocks hold most of the error of a
LayerNorm output (the features with outlier magnitudes), so few blocks go a long way.

``combine``: ``out = y + bias``, then optionally exact GELU: the epilogue of a product.

Model-agnostic: the encoder model composes them; numpy twins are the fallback and oracle.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.ir_encoder import QK, ResidualNormRow, gelu_erf_value
from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    const_i64,
    for_range,
    load_at,
    store_at,
    sweep,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native, f32_word
from embedpipe.codegen.library import KernelInputError
from embedpipe.codegen.threads import row_parts, split_range

NORM_PARAMS = [
    ("x", PTR),
    ("bias", PTR),
    ("res", PTR),
    ("w", PTR),
    ("beta", PTR),
    ("out", PTR),
    ("ext", PTR),
    ("sel", PTR),  # int64 block numbers, each in [0, D/32): checked by the driver
    ("T", I64),
    ("D", I64),
    ("nsel", I64),  # -1: no extended rows
    ("eps_bits", I64),  # fp32 bits in the low word: a single item runs by a direct ctypes call
    ("r0", I64),
    ("r1", I64),
]
COMBINE_PARAMS = [
    ("y", PTR),
    ("bias", PTR),
    ("out", PTR),
    ("N", I64),
    ("gelu", I64),
    ("r0", I64),
    ("r1", I64),
]


def _emit_residual_norm(b: ir.IRBuilder, isa: IsaSpec) -> None:
    x, bias, res, w, beta, out, ext, sel, T, D, nsel, eps_bits, r0, r1 = b.function.args
    eps = b.bitcast(b.trunc(eps_bits, I32), F32)
    norm = ResidualNormRow(b, isa)
    i8 = ir.IntType(8)
    with for_range(b, r0, r1, 1, "row") as row:
        base = b.mul(b.mul(row, D), const_i64(4))
        at = lambda ptr, off=base: b.gep(ptr, [off], source_etype=i8)  # noqa: E731
        norm.emit(at(x), bias, at(res), w, beta, at(out), D, eps)
        with b.if_then(b.icmp_signed(">=", nsel, const_i64(0))):
            ext_base = b.mul(b.mul(row, b.add(D, b.mul(nsel, const_i64(QK)))), const_i64(4))
            norm.extend(at(out), at(ext, ext_base), sel, nsel, D)
    b.ret_void()


def _emit_combine(b: ir.IRBuilder, isa: IsaSpec) -> None:
    y, bias, out, N, gelu, r0, r1 = b.function.args
    m = b.module
    width = 2 * isa.lanes
    done = b.append_basic_block("done")
    blocks = [b.append_basic_block(f"gelu{int(g)}") for g in (False, True)]
    switch = b.switch(b.zext(b.icmp_signed("!=", gelu, const_i64(0)), I64), done)
    for i, blk in enumerate(blocks):
        switch.add_case(const_i64(i), blk)
    for act, blk in zip((False, True), blocks):  # one loop nest per variant: no per-vector branch
        b.position_at_end(blk)
        with for_range(b, r0, r1, 1, "row") as row:
            base = b.mul(b.mul(row, N), const_i64(4))

            def body(ty: ir.Type, i: ir.Value, act=act, base=base) -> None:
                off = b.mul(i, const_i64(4))
                v = b.fadd(load_at(b, ty, y, b.add(base, off), 4), load_at(b, ty, bias, off, 4))
                store_at(b, gelu_erf_value(b, m, isa, v) if act else v, out, b.add(base, off), 4)

            sweep(b, const_i64(0), N, width, body, "col")
        b.branch(done)
    b.position_at_end(done)
    b.ret_void()


class ExtendBlocks:
    """Which 32-element blocks of a ``width``-wide row ``residual_norm`` extends by their
    residuals (in this order), checked once here: the kernel indexes rows by these numbers."""

    def __init__(self, width: int, blocks: Sequence[int]):
        n_blocks = width // QK if width > 0 and width % QK == 0 else 0
        if not n_blocks:
            raise KernelInputError(f"extended rows need a width that is a positive multiple of {QK}, got {width}")
        picked = tuple(int(i) for i in blocks)
        if len(set(picked)) != len(picked) or any(not 0 <= i < n_blocks for i in picked):
            raise KernelInputError(f"blocks {list(picked)} are not distinct block numbers in [0, {n_blocks})")
        self.width, self.blocks = width, picked
        self.array = np.array(picked, np.int64)
        self.array.flags.writeable = False
        self.address = self.array.ctypes.data  # read once: these rows are extended many times a forward

    @property
    def ext_width(self) -> int:
        """Width of an extended row: the row, then one residual block per selected block."""
        return self.width + QK * len(self.blocks)

    def columns(self) -> np.ndarray:
        """Column numbers of the selected blocks in a row, in extension order."""
        return (self.array[:, None] * QK + np.arange(QK)).reshape(-1)

    def __repr__(self) -> str:
        return f"ExtendBlocks({self.width}, {list(self.blocks)})"

    def __reduce__(self):
        """Copies and pickles are built anew: a copied array with the original's cached
        ``address`` would hand the kernel a stale pointer."""
        return ExtendBlocks, (self.width, self.blocks)


def residual_norm_reference(
    x: np.ndarray,
    bias: np.ndarray,
    res: np.ndarray,
    w: np.ndarray,
    beta: np.ndarray,
    eps: float,
    extend: ExtendBlocks | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """numpy twin: (LayerNorm(x + bias + res), its rows extended by ``extend`` or None)."""
    a = (x + bias + res).astype(np.float32)
    mean = a.mean(-1, keepdims=True, dtype=np.float32)
    c = a - mean
    var = (c * c).mean(-1, keepdims=True, dtype=np.float32)
    out = (c * (np.float32(1) / np.sqrt(var + np.float32(eps))) * w + beta).astype(np.float32)
    return out, (extend_reference(out, extend) if extend is not None else None)


def grid_reference(v: np.ndarray) -> np.ndarray:
    """Each element's value on its 32-block's Q8_0 grid (what an int8 product computes with)."""
    t, d = v.shape
    blocks = v.reshape(t, d // QK, QK)
    scale = (np.abs(blocks).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    return (np.round(blocks * inv) * scale).astype(np.float32).reshape(t, d)


def extend_reference(v: np.ndarray, extend: ExtendBlocks) -> np.ndarray:
    """(T, ext_width): each row, then the residuals ``v − grid(v)`` of the selected blocks."""
    cols = extend.columns()
    lo = v[:, cols] - grid_reference(v)[:, cols]
    return np.concatenate([v, lo], axis=1).astype(np.float32)


def combine_reference(y: np.ndarray, bias: np.ndarray, gelu: bool) -> np.ndarray:
    """numpy twin: y + bias, then exact GELU when ``gelu``."""
    from embedpipe.runtime.encoder_ops import gelu_erf

    s = (y + bias).astype(np.float32)
    return gelu_erf(s) if gelu else s


def _f32(name: str, a: object, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
        raise KernelInputError(
            f"{name}: expected float32 {shape}, got {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}"
        )
    return np.ascontiguousarray(a)


def checked_out(name: str, out: object, shape: tuple[int, ...], *inputs: np.ndarray) -> np.ndarray:
    """``out`` when it is a C-contiguous float32 ``shape`` array apart from ``inputs`` (a kernel
    may not write what another thread of it reads); a fresh one when None."""
    if out is None:
        return np.empty(shape, np.float32)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.shape != shape
        or not out.flags.c_contiguous
        or not out.flags.writeable
        or any(a is not None and np.may_share_memory(out, a) for a in inputs)
    ):
        raise KernelInputError(
            f"{name}: out must be a writable C-contiguous float32 {shape} array apart from the inputs"
        )
    return out


def row_ranges(rows: int, parts: int) -> list[tuple[int, int]]:
    """``split_range(0, rows, parts)``, without its arithmetic for the one-part case."""
    return [(0, rows)] if parts == 1 else split_range(0, rows, parts)


def address(a: np.ndarray) -> int:
    """Data address of a C-contiguous array, for the per-call arguments of these small kernels:
    numpy's ``.ctypes.data`` builds an object per call, a noticeable share of a single-text
    forward at dozens of calls; ctypes reads a writable buffer's address for a fraction of that
    (read-only or empty arrays take numpy's path)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


#: ``f32_word`` of the few fp32 constants these kernels take (LayerNorm epsilon, attention
#: scale: one or two per model), converted once.
cached_f32_word = functools.lru_cache(maxsize=64)(f32_word)


def _drive_residual_norm(native: Native, x, bias, res, w, beta, eps, extend, threads=1, out=None, ext_out=None):
    """``out`` / ``ext_out``: optional output buffers for the rows and their extension."""
    if x.ndim != 2:
        raise KernelInputError(f"residual_norm: x must be 2-D, got {x.shape}")
    t, d = x.shape
    x, res = _f32("residual_norm x", x, (t, d)), _f32("residual_norm res", res, (t, d))
    bias, w, beta = (_f32(f"residual_norm {n}", a, (d,)) for n, a in (("bias", bias), ("w", w), ("beta", beta)))
    if extend is not None and (not isinstance(extend, ExtendBlocks) or extend.width != d):
        raise KernelInputError(f"residual_norm: rows of {d} need ExtendBlocks of that width, got {extend!r}")
    out = checked_out("residual_norm", out, (t, d), x, res, bias, w, beta)
    ext = None
    if extend is not None:
        ext = checked_out("residual_norm ext", ext_out, (t, extend.ext_width), x, res, out, bias, w, beta)
    elif ext_out is not None:
        raise KernelInputError("residual_norm: an ext_out buffer without blocks to extend")
    if t:
        head = (address(x), address(bias), address(res), address(w), address(beta), address(out))
        sel = (address(ext), extend.address, t, d, len(extend.blocks)) if ext is not None else (0, 0, t, d, -1)
        tail = (*sel, cached_f32_word(float(eps)))
        native.run([(*head, *tail, a, b) for a, b in row_ranges(t, row_parts(threads, t * d))])
    return out, ext


def _drive_combine(native: Native, y, bias, gelu, threads=1, out=None):
    if not isinstance(y, np.ndarray) or y.ndim != 2:
        raise KernelInputError(f"combine: y must be a 2-D array, got {getattr(y, 'shape', type(y))}")
    t, n = y.shape
    y = _f32("combine y", y, y.shape)
    bias = _f32("combine bias", bias, (n,))
    out = checked_out("combine", out, (t, n), y, bias)
    if t:
        head = (address(y), address(bias), address(out), n, int(bool(gelu)))
        native.run([(*head, a, b) for a, b in row_ranges(t, row_parts(threads, t * n))])
    return out


def _residual_norm_twin(x, bias, res, w, beta, eps, extend, threads=1, out=None, ext_out=None):
    rows, ext = residual_norm_reference(x, bias, res, w, beta, eps, extend)
    if out is not None:
        out[...] = rows
        rows = out
    if ext is not None and ext_out is not None:
        ext_out[...] = ext
        ext = ext_out
    return rows, ext


def _combine_twin(y, bias, gelu, threads=1, out=None):
    result = combine_reference(y, bias, gelu)
    if out is None:
        return result
    out[...] = result
    return out


RESIDUAL_NORM = Kernel(
    "residual_norm", NORM_PARAMS, _emit_residual_norm, twin=_residual_norm_twin, drive=_drive_residual_norm
)
COMBINE = Kernel("combine", COMBINE_PARAMS, _emit_combine, twin=_combine_twin, drive=_drive_combine)
ENCODER_MODULE = KernelModule("ep_encoder", [RESIDUAL_NORM, COMBINE])
