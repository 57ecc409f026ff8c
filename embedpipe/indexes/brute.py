"""Exact (brute-force) inner-product search over fp32, int16 or int8 storage.

Few queries: the JIT row-dot kernel scans the stored codes directly (int8 reads 1 byte per
component). Many queries: blocks of stored rows are widened to float32 into one reused buffer
and multiplied with BLAS; memory stays bounded by the block size, not the index size.
Top-k is exact (argpartition), merged across blocks.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from embedpipe.indexes.base import IdTable, IndexMeta, StringTable, VectorIndex, topk_desc
from embedpipe.indexes.format import IndexFileError, read_container, write_container
from embedpipe.indexes.kernels import rowdot
from embedpipe.indexes.quant import QUANTS, SCALE_MODES, quantize

GEMM_MIN_QUERIES = 8  # below this the JIT scan beats widening blocks for BLAS
BLOCK_ROWS = 8192


class BruteIndex(VectorIndex):
    """All vectors in one array; exact top-k."""

    kind: ClassVar[str] = "brute"
    quants: ClassVar[tuple[str, ...]] = tuple(QUANTS)

    def __init__(self, codes: np.ndarray, scale: np.ndarray, quant: str, scale_mode: str,
                 ids: IdTable, meta: IndexMeta, columns: dict[str, StringTable] | None = None):
        super().__init__(codes.shape[1], quant, ids, meta, columns)
        self.codes, self.scale, self.scale_mode = codes, scale, scale_mode

    @classmethod
    def build(cls, vectors: np.ndarray, ids: IdTable, meta: IndexMeta, quant: str = "fp32",
              columns: dict[str, StringTable] | None = None, scale_mode: str = "dim",
              **unused: Any) -> BruteIndex:
        if quant not in QUANTS:
            raise ValueError(f"unknown quant {quant!r}; choose one of {tuple(QUANTS)}")
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"unknown scale mode {scale_mode!r}; choose one of {SCALE_MODES}")
        codes, scale = quantize(vectors, quant, scale_mode)
        return cls(codes, scale, quant, scale_mode, ids, meta, columns)

    # --- search -------------------------------------------------------------------------
    def _query_weights(self, q: np.ndarray) -> np.ndarray:
        """Fold a per-dimension scale into the queries (free at search time)."""
        if self.quant != "fp32" and self.scale_mode == "dim":
            return np.ascontiguousarray(q * self.scale[None, :])
        return q

    def _row_scale(self, scores: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if self.quant != "fp32" and self.scale_mode == "vector":
            scores *= self.scale[None, lo:hi]
        return scores

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Dense (q, n) score matrix for prepared queries (used by tests and small indexes)."""
        return np.concatenate([s for s, _ in self._score_blocks(q)], axis=1)

    def _score_blocks(self, q: np.ndarray):
        w = self._query_weights(q)
        n = self.codes.shape[0]
        if len(q) < GEMM_MIN_QUERIES:
            out = np.empty((len(q), n), np.float32)
            for i, row in enumerate(w):
                rowdot(self.codes, row, out[i])
            yield self._row_scale(out, 0, n), 0
            return
        buf = np.empty((min(BLOCK_ROWS, n), self.dim), np.float32)
        for lo in range(0, n, BLOCK_ROWS):
            hi = min(n, lo + BLOCK_ROWS)
            block = self.codes[lo:hi]
            if block.dtype != np.float32:
                np.copyto(buf[: hi - lo], block, casting="unsafe")
                block = buf[: hi - lo]
            yield self._row_scale(w @ block.T, lo, hi), lo

    def _search_rows(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        best_s: np.ndarray | None = None
        best_r: np.ndarray | None = None
        for scores, lo in self._score_blocks(q):
            s, cols = topk_desc(scores, k)
            rows = np.where(cols >= 0, cols + lo, -1)
            if best_s is None:
                best_s, best_r = s, rows
                continue
            s = np.concatenate([best_s, s], axis=1)
            rows = np.concatenate([best_r, rows], axis=1)
            ss, cc = topk_desc(s, k)
            best_s, best_r = ss, np.take_along_axis(rows, np.maximum(cc, 0), axis=1)
            best_r[cc < 0] = -1
        return best_s, best_r

    # --- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        header = dict(self.common_header(), params={"scale_mode": self.scale_mode})
        write_container(path, header, dict(self.common_sections(), codes=self.codes,
                                           scale=self.scale))

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> BruteIndex:
        header, sec = read_container(path, expected_type=cls.kind, verify=verify)
        ids, meta, cols = cls.common_from(path, header, sec)
        codes = sec.get("codes")
        spec = QUANTS.get(header.get("quant"))
        if codes is None or spec is None or codes.dtype != spec.dtype:
            raise IndexFileError(path, f"vector section does not match quant {header.get('quant')!r}")
        if codes.shape != (header["count"], header["dim"]):
            raise IndexFileError(path, f"vectors have shape {codes.shape}, header says "
                                       f"({header['count']}, {header['dim']})")
        return cls(codes, sec["scale"], header["quant"], header["params"]["scale_mode"],
                   ids, meta, cols)
