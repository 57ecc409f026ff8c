"""Numpy/numexpr ops of post-LayerNorm encoders (BERT, MPNet): LayerNorm with bias, exact
(erf) GELU, T5-style relative position buckets, attention with an additive per-head bias.

numpy has no erf, so GELU evaluates erf with Abramowitz & Stegun 7.1.26 (absolute error
below 1.5e-7, under float32 resolution of the result) in a few in-place numpy passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from embedpipe.runtime.ops import _MASKED, MatmulFn, _softmax_rows

if TYPE_CHECKING:
    from embedpipe.codegen.encoder_fused import ExtendBlocks

_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) · weight + bias over the last axis, in fp32."""
    n = np.float32(x.shape[-1])
    mean = np.einsum("...i->...", x, dtype=np.float32) / n
    out = x - mean[..., None]
    var = np.einsum("...i,...i->...", out, out, dtype=np.float32) / n
    out *= (1.0 / np.sqrt(var + np.float32(eps), dtype=np.float32))[..., None]
    out *= weight
    out += bias
    return out


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """0.5·x·(1 + erf(x/√2)), the exact GELU of BERT (not the tanh approximation), in place
    passes over fp32: erf(z) = 1 − t·P(t)·e^(−z²), t = 1/(1 + p·|z|) for z ≥ 0, odd in z."""
    f = np.float32
    z = np.abs(x) * f(1 / math.sqrt(2))
    t = z * f(_AS_P)
    t += f(1.0)
    np.reciprocal(t, out=t)
    poly = t * f(_AS_A[4])
    for coef in reversed(_AS_A[:4]):
        poly += f(coef)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 − erf(|x|/√2)
    poly *= f(0.5)
    poly *= x  # x·(1 − erf(|x|/√2))/2: GELU for x < 0, and x minus GELU for x ≥ 0
    return np.where(x >= 0, x - poly, poly).astype(np.float32, copy=False)


def relative_position_buckets(length: int, n_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) bucket of key j for query i: bidirectional T5/MPNet bucketing, half the
    buckets per direction, exact below a quarter of them, logarithmic up to max_distance."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query
    n = -rel
    half = n_buckets // 2
    ret = np.where(n < 0, half, 0)
    n = np.abs(n)
    exact = half // 2
    # float32 as in the reference implementation, so bucket boundaries agree
    scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact)) / np.float32(
        math.log(max_distance / exact)
    )
    large = exact + (scaled * np.float32(half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < exact, n, large)


def biased_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
) -> None:
    """Attention of packed sequences padded to the longest, plus an additive (H, Tm, Tm) bias.

    q (already scaled), k, v: (S, H, D); sequences are ``[starts[i], starts[i] + lengths[i])``;
    writes their rows of ``out`` (S, H·D). Padded keys are masked; padded queries dropped.
    """
    b, tm = len(starts), int(lengths.max())
    h, d = q.shape[1], q.shape[2]
    offs = np.arange(tm)
    valid = offs[None, :] < lengths[:, None]
    rows = np.where(valid, starts[:, None] + offs[None, :], starts[:, None])
    qb = q[rows].transpose(0, 2, 1, 3)  # (B, H, Tm, D)
    kb = k[rows].transpose(0, 2, 3, 1)  # (B, H, D, Tm)
    vb = v[rows].transpose(0, 2, 1, 3)  # (B, H, Tm, D)
    scores = np.matmul(qb, kb)
    if bias is not None:
        scores += bias[None, :, :tm, :tm]
    scores += np.where(valid, np.float32(0.0), _MASKED)[:, None, None, :]
    _softmax_rows(scores)
    heads = np.matmul(scores, vb).transpose(0, 2, 1, 3).reshape(b, tm, h * d)
    out[rows[valid]] = heads[valid]


class NumpyEncoderOps:
    """Fused encoder row ops on numpy (the oracle). Products here take fp32 activations, so
    no rows are ever extended for them."""

    #: Whether the ops run as native kernels that a step program can record (never here).
    native = False

    def __init__(self, backend: object):
        self.threads = getattr(backend, "threads", None) or 1

    def residual_norm(
        self,
        x: np.ndarray,
        bias: np.ndarray,
        res: np.ndarray,
        weight: np.ndarray,
        beta: np.ndarray,
        eps: float,
        extend: ExtendBlocks | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(LayerNorm(x + bias + res), its rows extended by ``extend`` (an
        ``encoder_fused.ExtendBlocks``) or None)."""
        from embedpipe.codegen.encoder_fused import residual_norm_reference

        return residual_norm_reference(x, bias, res, weight, beta, eps, extend)

    def combine(self, y: np.ndarray, bias: np.ndarray, gelu: bool) -> np.ndarray:
        """y + bias, then exact GELU when ``gelu``."""
        from embedpipe.codegen.encoder_fused import combine_reference

        return combine_reference(y, bias, gelu)

    def bias_gelu_matmul(self, w: MatmulFn, y: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """``w(gelu_erf(y + bias))``: the FFN's activation and down product."""
        return w(self.combine(y, bias, True))

    def fuses_gelu(self, w: object) -> bool:
        """Whether ``bias_gelu_matmul`` with ``w`` is one native call (else two)."""
        return False

    def residual_norm_matmul(
        self,
        w: MatmulFn,
        x: np.ndarray,
        bias: np.ndarray,
        res: np.ndarray,
        weight: np.ndarray,
        beta: np.ndarray,
        eps: float,
        extend: ExtendBlocks | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(h, w(h extended by extend))`` with ``h = residual_norm(...)``: a block's
        LayerNorm and the product that takes its output."""
        rows, ext = self.residual_norm(x, bias, res, weight, beta, eps, extend)
        return rows, w(rows if ext is None else ext)

    def fuses_norm(self, w: object) -> bool:
        """Whether ``residual_norm_matmul`` with ``w`` is one native call (else two)."""
        return False

    def attention(
        self,
        y: np.ndarray,
        qkv_bias: np.ndarray,
        n_head: int,
        head_dim: int,
        starts: np.ndarray,
        lengths: np.ndarray,
        scale: float,
        bias: np.ndarray | None,
    ) -> np.ndarray:
        """(T, H·D) attention of the packed sequences ``[starts[i], starts[i] + lengths[i])``
        over their own tokens; q, k, v are the column blocks of ``y + qkv_bias``; ``bias`` an
        additive (H, L, L) per-head bias or None."""
        from embedpipe.codegen.encoder_attention import attention_reference

        qkv = self.combine(y, qkv_bias, False)
        return attention_reference(qkv, n_head, head_dim, starts, lengths, scale, bias)


class JitEncoderOps(NumpyEncoderOps):
    """The same ops as JIT kernels (``codegen.encoder_fused``) for the backend's ISA; the numpy
    twins when LLVM cannot build them here."""

    def __init__(self, backend: object):
        from embedpipe.codegen import encoder_fused as ef
        from embedpipe.codegen.encoder_attention import ENCODER_ATTENTION

        super().__init__(backend)
        isa = backend.library.isa
        self._norm, self._combine = ef.RESIDUAL_NORM.native(isa), ef.COMBINE.native(isa)
        self._attention = ENCODER_ATTENTION.native(isa)

    @property
    def native(self) -> bool:
        """Whether every op runs as one native kernel call (and can be recorded into a step
        program, taking the ``out`` / ``ext_out`` buffers of its arena)."""
        return None not in (self._norm, self._combine, self._attention)

    def residual_norm(
        self,
        x: np.ndarray,
        bias: np.ndarray,
        res: np.ndarray,
        weight: np.ndarray,
        beta: np.ndarray,
        eps: float,
        extend: ExtendBlocks | None,
        **buffers: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self._norm is None:
            return super().residual_norm(x, bias, res, weight, beta, eps, extend)
        args = (x, bias, res, weight, beta, eps, extend)
        return self._norm.kernel.drive(self._norm, *args, threads=self.threads, **buffers)

    def combine(self, y: np.ndarray, bias: np.ndarray, gelu: bool, **buffers: np.ndarray) -> np.ndarray:
        if self._combine is None:
            return super().combine(y, bias, gelu)
        return self._combine.kernel.drive(self._combine, y, bias, gelu, threads=self.threads, **buffers)

    def bias_gelu_matmul(
        self,
        w: Callable[..., np.ndarray],
        y: np.ndarray,
        bias: np.ndarray,
        out: np.ndarray | None = None,
        act: np.ndarray | None = None,
    ) -> np.ndarray:
        """One fused native kernel per thread (GELU into the quantizer's scratch, then the
        product) for an integer-dot weight; otherwise the combine kernel (into ``act`` when
        given) and the product.  ``out``/``act``: buffers of a recorded arena."""
        if not self.fuses_gelu(w):
            return w(self.combine(y, bias, True, **_given(out=act)), **_given(out=out))
        from embedpipe.codegen import fused

        return fused.bias_gelu_matmul(w, y, bias, out=out)

    def fuses_gelu(self, w: object) -> bool:
        return getattr(w, "family", None) == "int" and self._combine is not None

    def residual_norm_matmul(
        self,
        w: Callable[..., np.ndarray],
        x: np.ndarray,
        bias: np.ndarray,
        res: np.ndarray,
        weight: np.ndarray,
        beta: np.ndarray,
        eps: float,
        extend: ExtendBlocks | None,
        out: np.ndarray | None = None,
        x_out: np.ndarray | None = None,
        ext_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One fused native kernel per thread (the LayerNorm, extended, into the quantizer's
        scratch, then the product) for an integer-dot weight; otherwise the residual_norm
        kernel (into ``x_out``/``ext_out``) and the product. Buffers: a recorded arena's."""
        if not self.fuses_norm(w):
            rows, ext = self.residual_norm(
                x, bias, res, weight, beta, eps, extend, **_given(out=x_out, ext_out=ext_out)
            )
            return rows, w(rows if ext is None else ext, **_given(out=out))
        from embedpipe.codegen import fused

        return fused.residual_norm_matmul(w, x, bias, res, weight, beta, eps, extend, x_out=x_out, out=out)

    def fuses_norm(self, w: object) -> bool:
        return getattr(w, "family", None) == "int" and self._norm is not None

    def attention(
        self,
        y: np.ndarray,
        qkv_bias: np.ndarray,
        n_head: int,
        head_dim: int,
        starts: np.ndarray,
        lengths: np.ndarray,
        scale: float,
        bias: np.ndarray | None,
        **buffers: np.ndarray,
    ) -> np.ndarray:
        native = self._attention
        if native is None:
            return super().attention(y, qkv_bias, n_head, head_dim, starts, lengths, scale, bias)
        args = (y, qkv_bias, y.shape[0], n_head, head_dim, starts, lengths, scale, bias)
        return native.kernel.drive(native, *args, threads=self.threads, **buffers)

    def record_attention(
        self,
        y: np.ndarray,
        qkv_bias: np.ndarray,
        n_head: int,
        head_dim: int,
        scale: float,
        longest: int,
        out: np.ndarray,
    ) -> np.ndarray:
        """Inside a step-program recording: attention over ``y``'s rows whose sequences each
        replay gives as its argument, a ``Sequences`` (``encoder_attention.record_per_run``)."""
        from embedpipe.codegen.encoder_attention import record_per_run

        return record_per_run(self._attention, y, qkv_bias, n_head, head_dim, scale, longest, self.threads, out)


def _given(**buffers: np.ndarray | None) -> dict[str, np.ndarray]:
    return {k: v for k, v in buffers.items() if v is not None}


ENCODER_OPS: dict[str, type[NumpyEncoderOps]] = {"numpy": NumpyEncoderOps, "jit": JitEncoderOps}


def encoder_ops_for(backend: object) -> NumpyEncoderOps:
    """The fused encoder ops that fit ``backend`` (numpy for backends this table lacks)."""
    return ENCODER_OPS.get(getattr(backend, "name", ""), NumpyEncoderOps)(backend)
