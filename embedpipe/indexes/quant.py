"""Scalar quantization of unit vectors to int8 / int16: storage types and registered scale schemes.

A scheme decides how the scale is picked and folds it into the query or the scores, so search
never materializes float copies of the stored vectors:

* ``vector``: one scale per stored vector, ``s_i = max_j |x_ij| / qmax``;
  ``score_i = s_i · (q_int_i · query)``.
* ``dim``: one calibrated range per dimension over the whole collection, centred on its
  midpoint ``m_j = (max_i x_ij + min_i x_ij) / 2`` with ``s_j = (max_i x_ij − min_i x_ij) / 2qmax``;
  ``score_i = q_int_i · (s ⊙ query) + m · query``. The offset term is the same for every stored
  row, so it never changes a ranking: it is added to the reported scores only.

A fixed ``×127`` on unit vectors wastes most of the int8 range (components of a 768-d unit vector
are ~±0.04), which is why neither scheme does that. Real embeddings are anisotropic (a few
dimensions carry most of the range) and off-centre after Matryoshka truncation, so ``dim`` is
the default (recall figures in the README). fp32 storage uses the ``none`` scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class StorageType:
    """Storage dtype and largest code for one `--quant` value."""

    name: str
    dtype: np.dtype
    qmax: int  # 0 = stored as float32, no scale


STORAGE_TYPES: dict[str, StorageType] = {
    "fp32": StorageType("fp32", np.dtype(np.float32), 0),
    "int16": StorageType("int16", np.dtype(np.int16), 32767),
    "int8": StorageType("int8", np.dtype(np.int8), 127),
}

NO_OFFSET = np.zeros(0, np.float32)
Calibration = tuple[np.ndarray, np.ndarray]  # (scale, offset) of an existing 'dim' index


def _inverse(scale: np.ndarray) -> np.ndarray:
    return np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)


class ScaleScheme:
    """How int codes map back to floats; the base class is the identity (fp32 storage)."""

    name: ClassVar[str] = "none"

    def quantize(
        self, x: np.ndarray, spec: StorageType, calibration: Calibration | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, scale, offset) for the rows of `x`."""
        return np.ascontiguousarray(x), np.ones(0, np.float32), NO_OFFSET

    def dequantize(
        self, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, rows: np.ndarray | slice = slice(None)
    ) -> np.ndarray:
        """Float32 reconstruction of `codes`, which are the stored rows `rows`."""
        return np.asarray(codes, np.float32)

    def query_weights(self, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Queries with a per-dimension scale folded in (scans then read raw codes)."""
        return q

    def row_scale(self, scale: np.ndarray, n: int) -> np.ndarray:
        """Per-stored-row factor the raw-code scores need (ones when there is none)."""
        return np.ones(max(1, n), np.float32)

    def scale_rows(self, scores: np.ndarray, scale: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """Apply the per-row factor in place to scores of stored rows `rows` (q, len(rows))."""
        return scores

    def calibration(self, scale: np.ndarray, offset: np.ndarray) -> Calibration | None:
        """What vectors added to an existing index must be quantized with."""
        return None

    def extend_scale(self, scale: np.ndarray, added: np.ndarray) -> np.ndarray:
        """The index's scale after appending rows quantized with scale `added`."""
        return scale

    def load_offset(self, sections: dict[str, np.ndarray], dim: int) -> np.ndarray:
        return NO_OFFSET


class VectorScale(ScaleScheme):
    name = "vector"

    def quantize(
        self, x: np.ndarray, spec: StorageType, calibration: Calibration | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = np.abs(x).max(axis=1) / spec.qmax
        codes = np.rint(x * _inverse(scale)[:, None])
        return codes, scale, NO_OFFSET

    def dequantize(
        self, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, rows: np.ndarray | slice = slice(None)
    ) -> np.ndarray:
        return codes.astype(np.float32) * scale[rows][:, None]

    def row_scale(self, scale: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(scale)

    def scale_rows(self, scores: np.ndarray, scale: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        scores *= scale[rows]
        return scores

    def extend_scale(self, scale: np.ndarray, added: np.ndarray) -> np.ndarray:
        return np.concatenate([scale, added])


class DimScale(ScaleScheme):
    name = "dim"

    def quantize(
        self, x: np.ndarray, spec: StorageType, calibration: Calibration | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if calibration is not None:
            scale, offset = calibration
        elif len(x):
            scale, offset = _range_of(x, spec)
        else:
            scale, offset = np.zeros(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)
        codes = np.rint((x - offset[None, :]) * _inverse(scale)[None, :])
        return codes, scale, offset

    def dequantize(
        self, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, rows: np.ndarray | slice = slice(None)
    ) -> np.ndarray:
        out = codes.astype(np.float32) * scale[None, :]
        return out + offset[None, :] if len(offset) else out

    def query_weights(self, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(q * scale[None, :], np.float32)

    def calibration(self, scale: np.ndarray, offset: np.ndarray) -> Calibration:
        return scale, offset

    def load_offset(self, sections: dict[str, np.ndarray], dim: int) -> np.ndarray:
        """The stored offset; files written before centred scales carry none (= zeros)."""
        off = sections.get("offset")
        return np.zeros(dim, np.float32) if off is None else np.asarray(off, np.float32)


QUANT_BLOCK = 16384  # rows coded at a time
SCALE_SCHEMES: dict[str, ScaleScheme] = {s.name: s for s in (VectorScale(), DimScale())}
NO_SCALE = ScaleScheme()


def scale_scheme(quant: str, mode: str) -> ScaleScheme:
    """The scheme of `--quant quant --scale mode`: `mode`'s, or the identity for fp32."""
    if mode not in SCALE_SCHEMES:
        raise ValueError(f"unknown scale mode {mode!r}; choose one of {tuple(SCALE_SCHEMES)}")
    return NO_SCALE if STORAGE_TYPES[quant].qmax == 0 else SCALE_SCHEMES[mode]


def quantize(
    x: np.ndarray, quant: str, mode: str = "vector", calibration: Calibration | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize rows of `x`; returns (codes, scale, offset).

    scale is (n,) for 'vector' and (d,) for 'dim'; offset is the (d,) midpoints for 'dim' and
    empty otherwise. `calibration` = (scale, offset) of an existing 'dim' index, reused when
    adding vectors to it (values outside the calibrated range clip).
    """
    spec = STORAGE_TYPES[quant]
    x = np.asarray(x, dtype=np.float32)
    scheme = scale_scheme(quant, mode)
    if not spec.qmax:
        codes, scale, offset = scheme.quantize(x, spec, calibration)
        return codes, np.asarray(scale, np.float32), np.asarray(offset, np.float32)
    if calibration is None and isinstance(scheme, DimScale) and len(x):
        calibration = _range_of(x, spec)  # spans all rows; every row is then coded on its own
    # row blocks: the float intermediates of a whole-corpus expression would be full-size copies
    codes = np.empty(x.shape, spec.dtype)
    scales, offset = [], NO_OFFSET
    for lo in range(0, max(len(x), 1), QUANT_BLOCK):
        part, scale, offset = scheme.quantize(x[lo : lo + QUANT_BLOCK], spec, calibration)
        codes[lo : lo + QUANT_BLOCK] = np.clip(part, -spec.qmax, spec.qmax)
        scales.append(np.asarray(scale, np.float32))
    scale = np.concatenate(scales) if isinstance(scheme, VectorScale) else scales[0]
    return codes, scale, np.asarray(offset, np.float32)


def _range_of(x: np.ndarray, spec: StorageType) -> Calibration:
    hi, lo = x.max(axis=0), x.min(axis=0)
    return (hi - lo) / (2 * spec.qmax), (hi + lo) / 2


def dequantize(codes: np.ndarray, scale: np.ndarray, mode: str, offset: np.ndarray = NO_OFFSET) -> np.ndarray:
    """Float32 reconstruction of every stored row (tests and graph construction)."""
    quant = next(q for q, s in STORAGE_TYPES.items() if s.dtype == codes.dtype)
    return scale_scheme(quant, mode).dequantize(codes, scale, offset)


def add_query_offset(scores: np.ndarray, q: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Scores of raw codes (q, ·) plus the per-query constant `m · query` of a centred 'dim'
    scale; unchanged without an offset (fp32, 'vector')."""
    if not len(offset):
        return scores
    return scores + (q @ offset).astype(np.float32)[:, None]
