"""ggml weight formats as registered classes: block geometry, dequantizer and load-time packer.

Every weight tensor is packed once, at prepare time, for one of two kernel families:

* ``float`` (:class:`FloatFormat`): fp32 rows (F32, F16, BF16 widen exactly) in the FMA
  kernel's panels;
* ``int`` (:class:`IntFormat`): int8 quants ``(N, K)`` plus an fp32 scale per 32 elements in
  the integer-dot kernel's panels (Q8_0 as stored; Q4_0 exactly, as ``q-8`` with the block's
  scale).  :class:`RequantizedFormat` (Q4_K, Q6_K) dequantizes with ``gguf.quants`` and
  re-quantizes per 32 elements with the library's emitted quantize kernel, which adds at most
  half a step of 1/127 of the block maximum on top of their own 4/6-bit error.

A new format is one subclass with ``@register``; ``FORMATS`` (and so the supported-type list
that errors and the CLI print) is derived from what is registered.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from embedpipe.codegen import huge_pages, ir_float, ir_q8
from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from embedpipe.codegen.ir_quantize import QK, quantize_reference

if TYPE_CHECKING:
    from embedpipe.codegen.library import KernelLibrary

Q = GGMLQuantizationType


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialized array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # math.prod: np.prod of a tuple costs microseconds
    buf = np.empty(nbytes + align, dtype=np.uint8)
    off = -buf.ctypes.data % align
    return buf[off : off + nbytes].view(dtype).reshape(shape)


def weight_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``aligned_empty`` for packed weights, which every forward pass streams: in huge-page
    memory when the array is large enough (``huge_pages``)."""
    dtype = np.dtype(dtype)
    raw = huge_pages.carve(math.prod(shape) * dtype.itemsize)
    return aligned_empty(shape, dtype) if raw is None else raw.view(dtype).reshape(shape)


class WeightFormat:
    """One ggml type: ``repack`` (the exact numpy unpacking the kernels consume), its
    ``dequantize`` to fp32 and ``pack`` (the kernel-layout arrays for a library)."""

    qtype: ClassVar[GGMLQuantizationType]
    family: ClassVar[str]  # the kernel family the packed arrays feed: "float" or "int"

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    @property
    def k_multiple(self) -> int:
        """What K must be a multiple of (the format's block, and the kernel's)."""
        return self.block_size

    def row_bytes(self, k: int) -> int:
        return k // self.block_size * self.type_size

    def repack(self, raw: np.ndarray, n: int, k: int) -> object:
        raise NotImplementedError

    def dequantize(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        """fp32 W (N, K): ``gguf.quants``, the reference for every format."""
        from gguf import quants as gguf_quants  # only here: a warm start never imports gguf

        return np.ascontiguousarray(gguf_quants.dequantize(raw, self.qtype).reshape(n, k), dtype=np.float32)

    def pack(self, lib: KernelLibrary, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


class FloatFormat(WeightFormat):
    family = "float"

    def dequantize(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return self.repack(raw, n, k)

    def pack(self, lib: KernelLibrary, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, ...]:
        return (ir_float.pack_weights(self.repack(raw, n, k), lib.isa, lib.float_tile, weight_empty),)


class IntFormat(WeightFormat):
    family = "int"
    exact: ClassVar[bool] = True  # ``repack`` gives codes·scale equal to ``dequantize`` exactly

    @property
    def k_multiple(self) -> int:
        return max(self.block_size, QK)

    def unpack(self, lib: KernelLibrary, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """int8 quants (N, K) and fp32 scales (N, K/32) for ``lib``."""
        return self.repack(raw, n, k)

    def dequantize(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        """quant × scale in fp32, the product ``gguf.quants`` forms for a format the int8 codes
        hold exactly (equal bits: tests compare them)."""
        q, d = self.repack(raw, n, k)
        out = np.empty((n, k // QK, QK), np.float32)
        np.multiply(q.reshape(n, k // QK, QK), d[:, :, None], out=out)  # one pass, no int8->fp32 temporary
        return out.reshape(n, k)

    def pack(self, lib: KernelLibrary, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, ...]:
        q, d = self.unpack(lib, raw, n, k)
        return ir_q8.pack_weights(q, d, lib.isa, lib.int_tile, weight_empty)


class RequantizedFormat(IntFormat):
    """Dequantized, then Q8_0-quantized per 32 elements (``quantize_reference`` is the twin of
    the library's emitted quantize kernel, which ``unpack`` uses)."""

    exact = False

    def repack(self, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return quantize_reference(self.dequantize(raw, n, k))

    dequantize = WeightFormat.dequantize  # gguf.quants: the codes are derived from it

    def unpack(self, lib: KernelLibrary, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return lib._quantize_weights(self.dequantize(raw, n, k))


FORMATS: dict[GGMLQuantizationType, WeightFormat] = {}


def register(cls: type[WeightFormat]) -> type[WeightFormat]:
    FORMATS[cls.qtype] = cls()
    return cls


@register
class F32(FloatFormat):
    qtype = Q.F32

    def repack(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return raw.view(np.float32).reshape(n, k)


@register
class F16(FloatFormat):
    qtype = Q.F16

    def repack(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return raw.view(np.float16).reshape(n, k).astype(np.float32)


@register
class BF16(FloatFormat):
    qtype = Q.BF16

    def repack(self, raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(n, k)


def _blocks(raw: np.ndarray, n: int, k: int, quant_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(fp32 scale per block (N, K/32), quant bytes (N, K/32, quant_bytes)) of d-first blocks."""
    blocks = raw.reshape(n, k // QK, 2 + quant_bytes)
    # the scale bytes are the contiguous last axis of their slice: viewed in place, no copy
    d = blocks[:, :, :2].view(np.float16)[:, :, 0].astype(np.float32)
    return d, blocks[:, :, 2:]


@register
class Q8_0(IntFormat):
    qtype = Q.Q8_0

    def repack(self, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, qs = _blocks(raw, n, k, QK)
        return np.ascontiguousarray(qs).view(np.int8).reshape(n, k), d


@register
class Q4_0(IntFormat):
    qtype = Q.Q4_0

    def repack(self, raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, qs = _blocks(raw, n, k, QK // 2)
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.int8) - np.int8(8)
        return q.reshape(n, k), d


@register
class Q4_K(RequantizedFormat):
    qtype = Q.Q4_K


@register
class Q6_K(RequantizedFormat):
    qtype = Q.Q6_K
