"""Exact (brute-force) inner-product search over fp32, int16 or int8 storage.

Few queries: the JIT row-dot kernel scans the stored codes directly (int8 reads 1 byte per
component). Many queries on int8: the codegen Q8_0 matmul (integer dot products, the same
kernels the model runs on). Otherwise blocks of stored rows are widened to float32 into one
reused buffer and multiplied with BLAS; memory stays bounded by the block size.
Top-k is exact, merged across blocks. The scale scheme (`quant.py`) folds int scales into the
queries or the scores.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import numpy as np

from embedpipe.codegen.rowdot import rowdot
from embedpipe.indexes.base import IdTable, IndexMeta, StringTable, VectorIndex, topk_desc
from embedpipe.indexes.format import IndexFileError, read_container, write_container
from embedpipe.indexes.params import SCALE_PARAM, Param
from embedpipe.indexes.quant import NO_OFFSET, STORAGE_TYPES, add_query_offset, quantize, scale_scheme
from embedpipe.indexes.validate import check_index

log = logging.getLogger(__name__)
GEMM_MIN_QUERIES = 8  # below this the JIT scan beats widening blocks for BLAS
BLOCK_ROWS = 8192
MAX_SCORES = 1 << 25  # floats of scores held at once (128 MB)
RESCORE = 2  # Q8_0 shortlist = RESCORE·k + 8 rows, re-scored exactly


class BruteIndex(VectorIndex):
    """All vectors in one array; exact top-k."""

    kind: ClassVar[str] = "brute"
    quants: ClassVar[tuple[str, ...]] = tuple(STORAGE_TYPES)
    build_params: ClassVar[tuple[Param, ...]] = (SCALE_PARAM,)

    def __init__(
        self,
        codes: np.ndarray,
        scale: np.ndarray,
        quant: str,
        scale_mode: str,
        ids: IdTable,
        meta: IndexMeta,
        columns: dict[str, StringTable] | None = None,
        offset: np.ndarray = NO_OFFSET,
    ):
        super().__init__(codes.shape[1], quant, ids, meta, columns)
        self.codes, self.scale, self.scale_mode = codes, scale, scale_mode
        self.scheme = scale_scheme(quant, scale_mode)
        self.offset = offset
        self._q8: Any = None
        self.use_jit = True

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: IdTable,
        meta: IndexMeta,
        quant: str = "fp32",
        columns: dict[str, StringTable] | None = None,
        progress: bool = False,
        **params: Any,
    ) -> BruteIndex:
        """Quantize unit `vectors`; `params` are the declared `build_params`."""
        if quant not in STORAGE_TYPES:
            raise ValueError(f"unknown quant {quant!r}; choose one of {tuple(STORAGE_TYPES)}")
        mode = cls.build_settings(params)["scale_mode"]
        codes, scale, offset = quantize(vectors, quant, mode)
        return cls(codes, scale, quant, mode, ids, meta, columns, offset)

    # --- search -------------------------------------------------------------------------
    def _query_weights(self, q: np.ndarray) -> np.ndarray:
        """Fold a per-dimension scale into the queries (free at search time)."""
        return self.scheme.query_weights(q, self.scale)

    def _row_scale(self, scores: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return self.scheme.scale_rows(scores, self.scale, slice(lo, hi))

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Dense (q, n) score matrix for prepared queries (used by tests and small indexes)."""
        dense = np.concatenate([s for s, _ in self._score_blocks(q)], axis=1)
        return add_query_offset(dense, q, self.offset)

    def _q8_matmul(self) -> Any:
        """The codegen int8 GEMM over the stored codes (vpdpbusd where the CPU has VNNI), with
        the row scale (or 1.0 for per-dimension scales, folded into the queries).  None when
        the kernels are unavailable or dim % 32 != 0."""
        if self._q8 is None:
            self._q8 = False
            if self.quant == "int8" and self.dim % 32 == 0 and self.count:
                from embedpipe.codegen import get_kernel_library

                try:
                    self._q8 = get_kernel_library().prepare_int8(
                        np.asarray(self.codes), self.scheme.row_scale(self.scale, self.count)
                    )
                except RuntimeError as exc:  # LLVM could not build the kernels: BLAS below
                    log.warning("int8 JIT matmul unavailable for brute int8 (%s)", exc)
        return self._q8 or None

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
        step = max(1, MAX_SCORES // max(1, self.count))  # bounds the (queries, n) score block
        parts = [self._search_chunk(q[i : i + step], k) for i in range(0, len(q), step)]
        scores = add_query_offset(np.concatenate([p[0] for p in parts]), q, self.offset)
        return scores, np.concatenate([p[1] for p in parts])

    def _search_q8(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Shortlist with the Q8_0 matmul (queries quantized too), then re-score the shortlist
        exactly against the stored codes with the float queries: same scores as the scan."""
        q8 = self._q8_matmul() if len(q) >= GEMM_MIN_QUERIES and self.use_jit else None
        if q8 is None:
            return None
        w = np.ascontiguousarray(self._query_weights(q), np.float32)
        _, cand = topk_desc(q8(w), min(self.count, RESCORE * k + 8))
        codes = np.asarray(self.codes)
        exact = np.empty(cand.shape, np.float32)
        for i in range(len(cand)):  # the JIT scan widens the int8 shortlist in registers
            rowdot(codes[cand[i]], w[i], exact[i])
        self.scheme.scale_rows(exact, self.scale, cand)
        s, cols = topk_desc(exact, k)
        rows = np.take_along_axis(cand, np.maximum(cols, 0), axis=1)
        return s, np.where(cols >= 0, rows, -1)

    def _search_chunk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        fast = self._search_q8(q, k)
        if fast is not None:
            return fast
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
        write_container(
            path, header, dict(self.common_sections(), codes=self.codes, scale=self.scale, offset=self.offset)
        )

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> BruteIndex:
        header, sec = read_container(path, expected_type=cls.kind, verify=verify)
        ids, meta, cols = cls.common_from(path, header, sec)
        codes = sec.get("codes")
        spec = STORAGE_TYPES.get(header.get("quant"))
        if codes is None or spec is None or codes.dtype != spec.dtype:
            raise IndexFileError(path, f"vector section does not match quant {header.get('quant')!r}")
        if codes.shape != (header["count"], header["dim"]):
            raise IndexFileError(
                path, f"vectors have shape {codes.shape}, header says ({header['count']}, {header['dim']})"
            )
        mode = header["params"]["scale_mode"]
        return check_index(
            path,
            cls(
                codes,
                sec.get("scale", NO_OFFSET),
                header["quant"],
                mode,
                ids,
                meta,
                cols,
                scale_scheme(header["quant"], mode).load_offset(sec, header["dim"]),
            ),
        )
