"""ggml weight formats as data: block geometry, kernel family and the load-time repack.

Every weight tensor is repacked once, at prepare time, into one of two kernel inputs:

* ``float``: fp32 rows (F32, F16, BF16 widen exactly);
* ``int``: int8 quants ``(N, K)`` plus an fp32 scale per 32 elements (Q8_0 as stored; Q4_0
  exactly, as ``q-8`` with the block's scale; Q4_K and Q6_K by dequantizing with
  ``gguf.quants`` and re-quantizing per 32 elements, which adds at most half a step of 1/127 of
  the block maximum on top of their own 4/6-bit error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from embedpipe.codegen.ir_q8 import QK, quantize_reference

Q = GGMLQuantizationType


@dataclass(frozen=True)
class QuantFormat:
    qtype: GGMLQuantizationType
    family: str  # "float" or "int"
    repack: Callable[[np.ndarray, int, int], object]
    exact: bool  # repack loses nothing relative to gguf.quants.dequantize
    # For formats re-quantized to Q8_0 blocks: the fp32 weights, so a caller can run the
    # quantization itself (the library uses its emitted quantize kernel, the twin of
    # `quantize_reference`, which `repack` uses).
    dequantize: Callable[[np.ndarray, int, int], np.ndarray] | None = None

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    def row_bytes(self, k: int) -> int:
        return k // self.block_size * self.type_size


def _f32(raw: np.ndarray, n: int, k: int) -> np.ndarray:
    return raw.view(np.float32).reshape(n, k)


def _f16(raw: np.ndarray, n: int, k: int) -> np.ndarray:
    return raw.view(np.float16).reshape(n, k).astype(np.float32)


def _bf16(raw: np.ndarray, n: int, k: int) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(n, k)


def _q8_0(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = raw.reshape(n, k // QK, 2 + QK)
    d = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    q = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(n, k)
    return q, d


def _q4_0(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = raw.reshape(n, k // QK, 2 + QK // 2)
    d = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    qs = blocks[:, :, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.int8) - np.int8(8)
    return q.reshape(n, k), d


def _dequantize(qtype: GGMLQuantizationType) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def dequantize(raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return np.ascontiguousarray(gguf_quants.dequantize(raw, qtype).reshape(n, k),
                                    dtype=np.float32)
    return dequantize


def _requantize(qtype: GGMLQuantizationType) -> Callable[[np.ndarray, int, int], object]:
    def repack(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return quantize_reference(_dequantize(qtype)(raw, n, k))
    return repack


FORMATS: dict[GGMLQuantizationType, QuantFormat] = {f.qtype: f for f in (
    QuantFormat(Q.F32, "float", _f32, True),
    QuantFormat(Q.F16, "float", _f16, True),
    QuantFormat(Q.BF16, "float", _bf16, True),
    QuantFormat(Q.Q8_0, "int", _q8_0, True),
    QuantFormat(Q.Q4_0, "int", _q4_0, True),
    QuantFormat(Q.Q4_K, "int", _requantize(Q.Q4_K), False, _dequantize(Q.Q4_K)),
    QuantFormat(Q.Q6_K, "int", _requantize(Q.Q6_K), False, _dequantize(Q.Q6_K)),
)}
