"""Drivers of the fused row kernels (``ir_fused``): validate in Python, split over the pool,
one native call each.  Numpy twins (``*_reference``) are the oracles and the fallbacks.

The work kernels follow ``PreparedMatmul.fork_work``'s plan (rows or weight panels per thread);
with a panel split the prologue runs once, its rows spread over the threads, into one shared
activation scratch before the panels are multiplied, and each row's owner stores its updated
residual, so no two threads write the same bytes.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from embedpipe.codegen.encoder_fused import ExtendBlocks
from embedpipe.codegen.kernel import f32_word
from embedpipe.codegen.prepared import KernelInputError, PreparedMatmul
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.recorder import active_recorder
from embedpipe.codegen.threads import CACHE_LINE, row_parts, split_range

if TYPE_CHECKING:
    from embedpipe.codegen.library import KernelLibrary

_GELU_C = np.float32(math.sqrt(2.0 / math.pi))


_constants: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
_constants_lock = threading.Lock()
MAX_CONSTANTS = 4096


def constant_address(arr: np.ndarray) -> int:
    """The address of a long-lived array (a norm weight), remembered by identity: numpy's
    ``.ctypes`` costs microseconds per call.  The cache holds a reference, so an id it
    knows cannot be reused by another array; it forgets the least recently used."""
    key = id(arr)
    with _constants_lock:
        hit = _constants.get(key)
        if hit is not None and hit[0] is arr:
            _constants.move_to_end(key)
            return hit[1]
        _constants[key] = (arr, arr.ctypes.data)
        if len(_constants) > MAX_CONSTANTS:
            _constants.popitem(last=False)
        return _constants[key][1]


@functools.lru_cache(maxsize=64)
def _f32(value: float) -> int:
    return f32_word(value)


_F32 = np.dtype(np.float32)


def _check_f32(kernel: str, **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype != _F32:
            raise KernelInputError(f"{kernel}: {name} must be a float32 numpy array")
        flags = arr.flags
        if not (flags.c_contiguous and flags.aligned):
            raise KernelInputError(f"{kernel}: {name} must be C-contiguous")


def _shape_error(msg: str) -> Exception:
    return KernelInputError(msg)


def _output_rows(t: int, n: int, out: np.ndarray | None = None, kernel: str = "") -> np.ndarray:
    """A (t, n) fp32 output on a cache line, as the matmul's: threads own whole lines of a row
    (``out`` when given, after checking it is one)."""
    if out is None:
        return aligned_empty((t, n), np.float32, CACHE_LINE)
    return check_output(kernel, out, (t, n), CACHE_LINE)


def _distinct(kernel: str, out: np.ndarray, *inputs: np.ndarray | None) -> None:
    """A product's output may not overlap its inputs (other items still read them)."""
    if any(a is not None and np.may_share_memory(out, a) for a in inputs):
        raise KernelInputError(f"{kernel}: out must not overlap the inputs")


def _row_parts(lib, elements: int) -> int:
    """Items of a row-wise op: one per thread for a large input; a small one runs whole on
    the calling thread (a pool hand-off would cost more than it saves), except inside a
    recording, where a program's step is a fork and a barrier whatever its item count."""
    return lib.threads if active_recorder() is not None else row_parts(lib.threads, elements)


def check_output(kernel: str, out: np.ndarray, shape: tuple[int, ...], align: int = 4) -> np.ndarray:
    """``out`` if it is a C-contiguous fp32 array of ``shape`` starting on an ``align``-byte
    boundary (a caller-owned output buffer, e.g. of a ``codegen.program`` arena)."""
    _check_f32(kernel, out=out)
    if out.shape != shape or out.ctypes.data % align:
        raise KernelInputError(f"{kernel}: out {out.shape} must have shape {shape} and start on {align} bytes")
    return out


def norm_matmul(
    w: PreparedMatmul,
    x: np.ndarray,
    y: np.ndarray | None,
    w_post: np.ndarray | None,
    w_pre: np.ndarray,
    eps: float,
    *,
    x_out: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x', rms(x')·w_pre · Wᵀ)`` with ``x' = x + rms(y)·w_post`` (``x' = x`` when ``y`` is
    None) for an int-family prepared weight ``w`` (N, K); x, y (T, K).  ``x_out`` (not ``x``:
    a panel split reads every row of ``x`` while item 0 writes ``x'``) and ``out`` are
    optional output buffers."""
    _check_f32("norm_matmul", x=x, w_pre=w_pre)
    t, k = x.shape if x.ndim == 2 else (-1, -1)
    if k != w.k or w_pre.shape != (k,):
        raise _shape_error(f"norm_matmul: x {x.shape} / w_pre {w_pre.shape} do not fit a {w.n}x{w.k} weight")
    if y is not None:
        _check_f32("norm_matmul", y=y, w_post=w_post)
        if y.shape != x.shape or w_post.shape != (k,):
            raise _shape_error(f"norm_matmul: y {y.shape} / w_post {w_post.shape} do not fit x {x.shape}")
        if x_out is None:
            x_out = np.empty_like(x)
        elif np.may_share_memory(check_output("norm_matmul", x_out, x.shape), x):
            raise _shape_error("norm_matmul: x_out must not overlap x")
    else:
        x_out = x
    out = _output_rows(t, w.n, out, "norm_matmul")
    _distinct("norm_matmul", out, x, y, x_out)
    if t == 0:
        return x_out, out
    head = (x.ctypes.data, 0 if y is None else y.ctypes.data, 0 if y is None else constant_address(w_post))
    rest = (x.ctypes.data if y is None else x_out.ctypes.data, constant_address(w_pre), _f32(eps))
    w.fork_work("q8work_addnorm", lambda write: (*head, *rest, write if y is not None else 0), t, out.ctypes.data)
    return x_out, out


def gelu_matmul(w: PreparedMatmul, gu: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """``(gelu_tanh(gu[:, :K])·gu[:, K:]) · Wᵀ`` for an int-family prepared weight (N, K)."""
    _check_f32("gelu_matmul", gu=gu)
    if gu.ndim != 2 or gu.shape[1] != 2 * w.k:
        raise _shape_error(f"gelu_matmul: input {gu.shape} must be (T, {2 * w.k}) for a {w.n}x{w.k} weight")
    t = gu.shape[0]
    out = _output_rows(t, w.n, out, "gelu_matmul")
    _distinct("gelu_matmul", out, gu)
    if t:
        w.fork_work("q8work_gelu", lambda write: (gu.ctypes.data,), t, out.ctypes.data)
    return out


def bias_gelu_matmul(
    w: PreparedMatmul, y: np.ndarray, bias: np.ndarray, *, out: np.ndarray | None = None
) -> np.ndarray:
    """``gelu_erf(y + bias) · Wᵀ`` for an int-family prepared weight (N, K); y (T, K), bias (K,):
    the GELU is computed into the quantizer's row scratch, never stored."""
    _check_f32("bias_gelu_matmul", y=y, bias=bias)
    if y.ndim != 2 or y.shape[1] != w.k or bias.shape != (w.k,):
        raise _shape_error(f"bias_gelu_matmul: y {y.shape} / bias {bias.shape} do not fit a {w.n}x{w.k} weight")
    t = y.shape[0]
    out = _output_rows(t, w.n, out, "bias_gelu_matmul")
    _distinct("bias_gelu_matmul", out, y)
    if t:
        w.fork_work("q8work_bias_gelu", lambda write: (y.ctypes.data, constant_address(bias)), t, out.ctypes.data)
    return out


def residual_norm_matmul(
    w: PreparedMatmul,
    x: np.ndarray,
    bias: np.ndarray,
    res: np.ndarray,
    weight: np.ndarray,
    beta: np.ndarray,
    eps: float,
    extend: ExtendBlocks | None,
    *,
    x_out: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(h, ext(h) · Wᵀ)`` with ``h = LayerNorm(x + bias + res)·weight + beta`` (x, res (T, D))
    and ``ext(h)`` its rows extended by ``extend`` (``encoder_fused.ExtendBlocks``; the rows
    themselves when None) for an int-family prepared weight ``w`` of that width: the
    ``residual_norm`` kernel and the product in one call per thread. ``x_out`` and ``out``
    are optional output buffers."""
    _check_f32("residual_norm_matmul", x=x, res=res, bias=bias, weight=weight, beta=beta)
    t, d = x.shape if x.ndim == 2 else (-1, -1)
    if res.shape != x.shape or any(v.shape != (d,) for v in (bias, weight, beta)):
        raise _shape_error(
            f"residual_norm_matmul: x {x.shape}, res {res.shape}, bias/weight/beta "
            f"{bias.shape}/{weight.shape}/{beta.shape} do not fit rows of {d}"
        )
    if extend is not None and (not isinstance(extend, ExtendBlocks) or extend.width != d):
        raise _shape_error(f"residual_norm_matmul: rows of {d} need ExtendBlocks of that width, got {extend!r}")
    width = d if extend is None else extend.ext_width
    if w.k != width:
        raise _shape_error(f"residual_norm_matmul: a {w.n}x{w.k} weight does not take extended rows of {width}")
    x_out = np.empty_like(x) if x_out is None else check_output("residual_norm_matmul", x_out, x.shape)
    _distinct("residual_norm_matmul", x_out, x, res)
    out = _output_rows(t, w.n, out, "residual_norm_matmul")
    _distinct("residual_norm_matmul", out, x, res, x_out)
    if t == 0:
        return x_out, out
    sel = (0, 0) if extend is None else (extend.address, len(extend.blocks))
    head = (x.ctypes.data, constant_address(bias), res.ctypes.data, constant_address(weight), constant_address(beta))
    words = (*head, x_out.ctypes.data, *sel, _f32(eps))
    w.fork_work("q8work_residual_norm", lambda write: words, t, out.ctypes.data)
    return x_out, out


def qk_norm_rope(
    lib: KernelLibrary,
    qkv: np.ndarray,
    qw: np.ndarray,
    kw: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    n_q: int,
    n_kv: int,
    d: int,
    dv: int,
    eps: float,
    *,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q (T, Hq, D), k (T, Hkv, D), v (T, Hkv, Dv) from a packed (T, Q|K|V) product: per-head
    RMS norm (weights ``qw``/``kw`` of length D), then NeoX RoPE with per-row ``cos``/``sin``
    (T, D/2); ``out`` optional (q, k, v) buffers."""
    _check_f32("qk_norm_rope", qkv=qkv, qw=qw, kw=kw, cos=cos, sin=sin)
    t = qkv.shape[0]
    if d % 2 or qkv.ndim != 2 or qkv.shape[1] != (n_q + n_kv) * d + n_kv * dv:
        raise _shape_error(f"qk_norm_rope: qkv {qkv.shape} does not hold {n_q}+{n_kv} heads of {d} and {n_kv} of {dv}")
    if qw.shape != (d,) or kw.shape != (d,) or cos.shape != (t, d // 2) or sin.shape != cos.shape:
        raise _shape_error(f"qk_norm_rope: weights {qw.shape}/{kw.shape} or tables {cos.shape}/{sin.shape} do not fit")
    shapes = ((t, n_q, d), (t, n_kv, d), (t, n_kv, dv))
    if out is None:
        q, k, v = (np.empty(shape, np.float32) for shape in shapes)
    else:
        q, k, v = (check_output("qk_norm_rope", o, shape) for o, shape in zip(out, shapes))
    if t:
        arrays = (qkv.ctypes.data, q.ctypes.data, k.ctypes.data, v.ctypes.data)
        tables = (constant_address(qw), constant_address(kw), cos.ctypes.data, sin.ctypes.data)
        words = (*arrays, *tables, n_q, n_kv, d, dv, _f32(eps))
        lib.fork("qk_norm_rope", [(*words, a, b) for a, b in split_range(0, t, _row_parts(lib, qkv.size))])
    return q, k, v


def add_norm(
    lib: KernelLibrary,
    x: np.ndarray,
    y: np.ndarray,
    w_post: np.ndarray,
    w: np.ndarray,
    eps: float,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``rms(x + rms(y)·w_post)·w`` row by row; x, y (T, D)."""
    _check_f32("add_norm", x=x, y=y, w_post=w_post, w=w)
    if x.ndim != 2 or y.shape != x.shape or w_post.shape != (x.shape[1],) or w.shape != w_post.shape:
        raise _shape_error(f"add_norm: x {x.shape}, y {y.shape}, weights {w_post.shape}/{w.shape} do not fit")
    out = np.empty_like(x) if out is None else check_output("add_norm", out, x.shape)
    t, d = x.shape
    if t:
        weights = (constant_address(w_post), constant_address(w))
        head = (x.ctypes.data, y.ctypes.data, *weights, out.ctypes.data, d, _f32(eps))
        lib.fork("add_norm", [(*head, a, b) for a, b in split_range(0, t, _row_parts(lib, x.size))])
    return out


# ---- numpy twins (same formulas; the oracle in tests and the path of non-int weights) ----


def rms_norm_reference(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    mean_sq = np.einsum("...i,...i->...", x, x, dtype=np.float32) / np.float32(x.shape[-1])
    inv = 1.0 / np.sqrt(mean_sq + np.float32(eps), dtype=np.float32)
    return (x * inv[..., None]) * weight


def gelu_tanh_mul_reference(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    u = _GELU_C * (gate + np.float32(0.044715) * gate * gate * gate)
    return (np.float32(0.5) * gate * (np.float32(1.0) + np.tanh(u)) * up).astype(np.float32)


def rope_reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i+half) of the last axis of x (T, heads, D); cos/sin (T, D/2)."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(np.float32)


def qk_norm_rope_reference(
    qkv: np.ndarray,
    qw: np.ndarray,
    kw: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    n_q: int,
    n_kv: int,
    d: int,
    dv: int,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = qkv.shape[0]
    nq, nk = n_q * d, n_kv * d
    q = rms_norm_reference(qkv[:, :nq].reshape(t, n_q, d), qw, eps)
    k = rms_norm_reference(qkv[:, nq : nq + nk].reshape(t, n_kv, d), kw, eps)
    v = np.ascontiguousarray(qkv[:, nq + nk :]).reshape(t, n_kv, dv)
    return rope_reference(q, cos, sin), rope_reference(k, cos, sin), v


def add_norm_reference(x: np.ndarray, y: np.ndarray, w_post: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm_reference(x + rms_norm_reference(y, w_post, eps), w, eps)
