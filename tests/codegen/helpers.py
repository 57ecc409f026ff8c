"""Random GGUF weight bytes and numpy oracles for the kernel tests."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

Q = GGMLQuantizationType


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, rng: np.random.Generator,
               scale: float = 1.0) -> np.ndarray:
    """GGUF bytes (N, row_bytes) of a random weight of ``qtype``.

    Types gguf-py can quantize are quantized from Gaussian values; for Q4_K/Q6_K (no numpy
    quantizer) the quant bytes are random and the fp16 super-block scales are set explicitly.
    """
    bs, ts = GGML_QUANT_SIZES[qtype]
    if qtype in (Q.Q4_K, Q.Q6_K):
        nblk = k // bs
        raw = rng.integers(0, 256, size=(n, nblk, ts), dtype=np.uint8)
        d = rng.uniform(0.5, 1.5, size=(n, nblk)) * scale / (64 if qtype == Q.Q4_K else 2048)
        if qtype == Q.Q4_K:
            raw[:, :, 0:2] = _f16_bytes(d)
            raw[:, :, 2:4] = _f16_bytes(d / 4)
        else:
            raw[:, :, ts - 2:ts] = _f16_bytes(d)
        return raw.reshape(n, nblk * ts)
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    return np.asarray(gguf_quants.quantize(w, qtype)).view(np.uint8).reshape(n, -1)


def dequant(qtype: GGMLQuantizationType, raw: np.ndarray, n: int, k: int) -> np.ndarray:
    return np.asarray(gguf_quants.dequantize(raw, qtype), dtype=np.float64).reshape(n, k)
