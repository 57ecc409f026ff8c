"""HNSW (Malkov & Yashunin): layered proximity graphs, greedy descent, beam search on layer 0.

Graph storage (flat arrays that save and mmap as-is):

* ``nbr0``  int32 (n, 2M): layer-0 neighbours, -1 padded;
* ``level`` int8 (n,): top layer of each node; ``upoff`` int64 (n,): row of the node's layer-1
  list in ``nbru`` (int32 (rows, M)); its layers 1..level sit in consecutive rows.

Build (`build`, `from_codes`, `add`): insertion as in the paper, in deterministic batches run
by native kernels over the stored codes — see `hnsw_build` (driver, numpy twin) and
`hnsw_insert_kernel` (emitter). Search runs the JIT kernel of `hnsw_kernel` (IR in `hnsw_search_ir`) when it compiles,
else the numpy reference below (also the test oracle).
"""

from __future__ import annotations

import heapq
import os
from typing import Any, ClassVar

import numpy as np

from embedpipe.indexes.base import IdTable, IndexMeta, StringTable, VectorIndex, pad_topk
from embedpipe.indexes.format import IndexFileError, read_container, write_container
from embedpipe.indexes.params import SCALE_PARAM, SEED_PARAM, Param, file_bounds
from embedpipe.indexes.quant import NO_OFFSET, quantize, scale_scheme
from embedpipe.indexes.validate import check_index, check_layer0, links_in_range

EF_SEARCH = Param(
    "ef_search",
    int,
    96,
    "beam width at query time (the build stores it as the default).",
    **file_bounds("hnsw", "ef_search"),
)


def storage_of(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, quant: str, scale_mode: str) -> Any:
    """The builder's view of stored rows: float value = code·S·R[row] + O."""
    from embedpipe.indexes.hnsw_build import Storage

    n, d = codes.shape
    ones_n, ones_d, zeros_d = (np.ones(n, np.float32), np.ones(d, np.float32), np.zeros(d, np.float32))
    if quant == "fp32":
        return Storage(codes, ones_n, ones_d, zeros_d)
    if scale_mode == "vector":
        return Storage(codes, np.ascontiguousarray(scale, np.float32), ones_d, zeros_d)
    return Storage(
        codes,
        ones_n,
        np.ascontiguousarray(scale, np.float32),
        np.ascontiguousarray(offset, np.float32) if len(offset) else zeros_d,
    )


class HnswIndex(VectorIndex):
    kind: ClassVar[str] = "hnsw"
    quants: ClassVar[tuple[str, ...]] = ("fp32", "int8")
    build_params: ClassVar[tuple[Param, ...]] = (
        Param(
            "m", int, 16, "links per node (2M on layer 0); levels are drawn with 1/ln(m).", **file_bounds("hnsw", "m")
        ),
        Param(
            "ef_construction", int, 100, "candidate list size when linking.", **file_bounds("hnsw", "ef_construction")
        ),
        EF_SEARCH,
        SCALE_PARAM,
        SEED_PARAM,
    )
    search_params: ClassVar[tuple[Param, ...]] = (EF_SEARCH,)

    def __init__(
        self,
        codes: np.ndarray,
        scale: np.ndarray,
        quant: str,
        nbr0: np.ndarray,
        level: np.ndarray,
        upoff: np.ndarray,
        nbru: np.ndarray,
        entry: int,
        params: dict[str, int],
        ids: IdTable,
        meta: IndexMeta,
        columns: dict[str, StringTable] | None = None,
        offset: np.ndarray = NO_OFFSET,
    ) -> None:
        super().__init__(codes.shape[1], quant, ids, meta, columns)
        self.codes, self.scale, self.offset = codes, scale, offset
        self.nbr0, self.level, self.upoff, self.nbru = nbr0, level, upoff, nbru
        self.entry, self.params = entry, dict(params)
        self.m = params["m"]
        self.scale_mode = params.get("scale_mode", "vector")
        self.scheme = scale_scheme(quant, self.scale_mode)
        self.ef_search = params["ef_search"]
        self._kernel: Any = None

    # --- vectors ------------------------------------------------------------------------
    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.scheme.dequantize(self.codes[rows], self.scale, self.offset, rows)

    def row_scale(self) -> np.ndarray:
        """Per-row factor the search kernel applies (ones when the scale is per dimension)."""
        return self.scheme.row_scale(self.scale, self.count)

    def query_weights(self, q: np.ndarray) -> np.ndarray:
        """Queries with a per-dimension scale folded in (the kernel then scans raw codes)."""
        return self.scheme.query_weights(q, self.scale)

    def _sims(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        return self.vectors(rows) @ q

    def upper(self, node: int, layer: int) -> np.ndarray:
        return links_in_range(self._where(), self.nbru[self.upoff[node] + layer - 1], self.count)

    def _where(self) -> str:
        return getattr(self, "path", "this hnsw index")

    # --- build --------------------------------------------------------------------------
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
    ) -> HnswIndex:
        """Build over unit `vectors`; `params` are the declared `build_params` (defaults there)."""
        if quant not in cls.quants:
            raise ValueError(f"hnsw supports quant {cls.quants}, not {quant!r}")
        p = cls.build_settings(params)
        codes, scale, offset = quantize(np.ascontiguousarray(vectors, np.float32), quant, p["scale_mode"])
        return cls.from_codes(codes, scale, offset, quant, ids, meta, columns, progress=progress, **p)

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        scale: np.ndarray,
        offset: np.ndarray,
        quant: str,
        ids: IdTable,
        meta: IndexMeta,
        columns: dict[str, StringTable] | None = None,
        progress: bool = False,
        **params: Any,
    ) -> HnswIndex:
        """Link already-quantized rows (the graph is built on the stored codes); `params` are
        the declared `build_params`."""
        from embedpipe.indexes.hnsw_build import build_graph

        p = cls.build_settings(params)
        g = build_graph(
            storage_of(codes, scale, offset, quant, p["scale_mode"]), p["m"], p["ef_construction"], p["seed"], progress
        )
        stored = {
            "m": p["m"],
            "ef_construction": p["ef_construction"],
            "ef_search": p["ef_search"],
            "max_level": max(g.maxlevel, 0),
            "seed": p["seed"],
            "scale_mode": p["scale_mode"],
        }
        return cls(
            codes, scale, quant, g.nbr0, g.level, g.upoff, g.nbru, max(g.entry, 0), stored, ids, meta, columns, offset
        )

    # --- search (numpy reference) --------------------------------------------------------
    def _greedy(self, q: np.ndarray, node: int) -> int:
        best = float(self._sims(np.array([node]), q)[0])
        for layer in range(int(self.level[self.entry]), 0, -1):
            changed = True
            while changed:
                changed = False
                nb = self.upper(node, layer)
                if len(nb):
                    s = self._sims(nb, q)
                    j = int(s.argmax())
                    if s[j] > best:
                        best, node, changed = float(s[j]), int(nb[j]), True
        return node

    def beam(self, q: np.ndarray, entries: list[int], ef: int, neighbours: Any = None) -> list[tuple[float, int]]:
        """Best-first search on one layer; returns up to ef (sim, node) sorted descending."""
        neighbours = neighbours or (lambda u: links_in_range(self._where(), self.nbr0[u], self.count))
        visited = set(entries)
        s0 = self._sims(np.array(entries), q)
        cand = [(-float(s), e) for s, e in zip(s0, entries)]
        heapq.heapify(cand)
        res = [(float(s), e) for s, e in zip(s0, entries)]
        heapq.heapify(res)
        while len(res) > ef:
            heapq.heappop(res)
        while cand:
            negs, u = heapq.heappop(cand)
            if len(res) >= ef and -negs < res[0][0]:
                break
            nb = [v for v in neighbours(u).tolist() if v not in visited]
            if not nb:
                continue
            visited.update(nb)
            for s, v in zip(self._sims(np.array(nb), q).tolist(), nb):
                if len(res) < ef or s > res[0][0]:
                    heapq.heappush(cand, (-s, v))
                    heapq.heappush(res, (s, v))
                    if len(res) > ef:
                        heapq.heappop(res)
        return sorted(res, reverse=True)

    def search_reference(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.full((len(q), k), -np.inf, np.float32)
        r = np.full((len(q), k), -1, np.int64)
        for i, qi in enumerate(q):
            found = self.beam(qi, [self._greedy(qi, self.entry)], max(ef, k))[:k]
            s[i, : len(found)] = [f[0] for f in found]
            r[i, : len(found)] = [f[1] for f in found]
        return s, r

    def _search_rows(self, q: np.ndarray, k: int, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ef = max(ef_search or self.ef_search, k)
        if self.count == 0:
            return pad_topk(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        from embedpipe.indexes.hnsw_kernel import HnswKernel

        if self._kernel is None:
            self._kernel = HnswKernel.for_index(self) or False
        if self._kernel:
            return self._kernel.search(q, k, ef)
        return self.search_reference(q, k, ef)

    # --- incremental add -----------------------------------------------------------------
    def add(
        self,
        vectors: np.ndarray,
        ids: list[Any] | np.ndarray | None = None,
        columns: dict[str, list[str]] | None = None,
        progress: bool = False,
    ) -> None:
        """Insert vectors as `build` does (levels from a seed derived from the build seed and
        the current count, so an update is reproducible); ids default to continuing numbers."""
        from embedpipe.indexes.hnsw_build import Graph, GraphBuilder, draw_levels, unlink_deleted
        from embedpipe.indexes.update import extend_columns, extend_ids

        x = self.prepare_queries(vectors)
        n0 = self.count
        check_layer0(self._where(), self)  # the insertion kernels follow these ids unchecked
        self.ids = extend_ids(self.ids, ids, len(x))
        self.columns = extend_columns(self.columns, columns, n0, len(x))
        codes, scale, _ = quantize(
            x, self.quant, self.scale_mode, calibration=self.scheme.calibration(self.scale, self.offset)
        )
        self.codes = np.concatenate([self.codes, codes])
        self.scale = self.scheme.extend_scale(self.scale, scale)
        top = int(self.level[self.entry]) if n0 else -1
        g = Graph(
            np.asarray(self.nbr0),
            np.asarray(self.level),
            np.asarray(self.upoff),
            np.asarray(self.nbru),
            self.entry if n0 else -1,
            top,
        )
        rng = np.random.default_rng([int(self.params.get("seed", 0)), n0])
        g = g.extend(draw_levels(len(x), self.m, rng), self.m)
        store = storage_of(self.codes, self.scale, self.offset, self.quant, self.scale_mode)
        builder = GraphBuilder(store, g, self.m, self.params["ef_construction"])
        builder.insert(n0 + rng.permutation(len(x)), done=n0, progress=progress)
        if len(self.deleted):  # repair: reconnect the paths that ran through tombstones
            builder.relink(unlink_deleted(g, self.deleted))
        self.nbr0, self.level, self.upoff, self.nbru = g.nbr0, g.level, g.upoff, g.nbru
        self.entry = g.entry
        self.params["max_level"] = g.maxlevel
        self._kernel = None

    # --- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        header = dict(self.common_header(), params=dict(self.params, entry=self.entry))
        write_container(
            path,
            header,
            dict(
                self.common_sections(),
                codes=self.codes,
                scale=self.scale,
                offset=self.offset,
                nbr0=self.nbr0,
                level=self.level,
                upoff=self.upoff,
                nbru=self.nbru,
            ),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> HnswIndex:
        header, sec = read_container(path, expected_type=cls.kind, verify=verify)
        ids, meta, cols = cls.common_from(path, header, sec)
        try:
            arrays = [sec[k] for k in ("codes", "scale", "nbr0", "level", "upoff", "nbru")]
        except KeyError as exc:
            raise IndexFileError(path, f"missing section {exc}") from None
        codes, _, nbr0 = arrays[:3]
        n = header["count"]
        if codes.shape != (n, header["dim"]) or len(nbr0) != n:
            raise IndexFileError(path, f"graph/vector sections do not match count {n}")
        p = header["params"]
        offset = scale_scheme(header["quant"], p.get("scale_mode", "vector")).load_offset(sec, header["dim"])
        return check_index(
            path, cls(*arrays[:1], arrays[1], header["quant"], *arrays[2:], int(p["entry"]), p, ids, meta, cols, offset)
        )
