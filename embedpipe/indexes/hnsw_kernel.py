"""HNSW search on the native kernel of ``hnsw_search_ir``: the kernels' declarations, each
thread's scratch (visited tags, the ef-sized pool, packed argument words), query ranges on the
native worker pool, and a fault status turned into a clear error naming the file.
`HnswIndex.search_reference` in numpy is the oracle (and the fallback when
`HnswKernel.for_index` is None).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from embedpipe.codegen.irutil import F32, I8
from embedpipe.codegen.kernel import Kernel, KernelModule
from embedpipe.codegen.threads import default_threads, split_range
from embedpipe.indexes.format import IndexFileError
from embedpipe.indexes.hnsw_search_ir import PARAMS, Fault, emitter
from embedpipe.indexes.quant import add_query_offset

HNSW_SEARCH = {
    quant: Kernel(f"hnsw_search_{quant}", PARAMS, emitter(elt)) for quant, elt in (("fp32", F32), ("int8", I8))
}
HNSW_MODULE = KernelModule("ep_hnsw", list(HNSW_SEARCH.values()))
QUERIES_PER_THREAD = 4  # fewer queries than this per thread run on the calling thread


FAULT_PROBLEMS = {
    Fault.START: "its entry point or top level is outside the graph",
    Fault.NEIGHBOUR: "a neighbour list names a node outside the graph",
    Fault.UPPER_ROW: "an upper-layer row lies outside the stored lists",
}


_AT = {name: i for i, (name, _) in enumerate(PARAMS)}


def _address(a: np.ndarray) -> int:
    """Data address of a C-contiguous array (``a.ctypes.data`` builds a ctypes object on every
    call, a large share of a single-query search's Python overhead; read-only arrays take
    that path)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


class _Slot:
    """Scratch of one concurrently running item: visited tags, the ef-sized pool, a status
    word, and the item's kernel arguments packed as 64-bit words (the graph's and the
    scratch's set once; the query's set per call)."""

    def __init__(self, graph: tuple[int, ...], count: int) -> None:
        self.visited = np.zeros(count, np.int32)
        self.status = np.zeros(1, np.int64)
        self.words = np.zeros(len(PARAMS), np.int64)
        self.words[: len(graph)] = graph
        self.words[_AT["visited"]] = self.visited.ctypes.data
        self.words[_AT["status"]] = self.status.ctypes.data
        self.fresh = np.empty(max(1, graph[_AT["m0"]]), np.int32)  # unvisited neighbours of one node
        self.words[_AT["fresh"]] = self.fresh.ctypes.data
        self.address = self.words.ctypes.data
        self.tag = 0
        self.ef = -1

    def claim(self, ef: int, queries: int) -> None:
        """Grow the pool to ``ef``; reserve ``queries`` visited tags for the next call."""
        words = self.words
        if self.ef < ef:
            self.ef = ef
            self.pool = (np.empty(ef, np.int32), np.empty(ef, np.float32), np.empty(ef, np.int8))
            for name, arr in zip(("pool_id", "pool_s", "pool_x"), self.pool):
                words[_AT[name]] = arr.ctypes.data
        if self.tag + queries >= 2**31 - 1:
            self.visited[:] = 0
            self.tag = 0
        words[_AT["tag"]] = self.tag + 1
        words[_AT["ef"]] = ef
        words[_AT["nq"]] = queries
        self.tag += queries

    def fault(self) -> Fault | None:
        """The fault the last call stopped on (cleared), or None."""
        if not self.status[0]:
            return None
        fault = Fault(int(self.status[0]))
        self.status[0] = 0
        return fault


class HnswKernel:
    """Binds one HnswIndex's arrays to the compiled search; scratch per calling thread.

    The kernel is told the node count and row count it may index (the smallest of the arrays
    it reads), so even a graph the validator did not see ends in `IndexFileError`, never in
    an out-of-bounds read.
    """

    def __init__(self, index: Any, native: Any) -> None:
        self.ix, self.native = index, native
        X, scale, nbr0, upoff, nbru = self.arrays = [
            np.ascontiguousarray(x)
            for x in (
                index.codes,
                index.row_scale(),
                index.nbr0,
                index.upoff,
                index.nbru if len(index.nbru) else np.full((1, index.m), -1, np.int32),
            )
        ]
        if X.ndim != 2 or X.shape[1] != index.dim or nbr0.ndim != 2 or nbru.ndim != 2:
            raise IndexFileError(self._path(), "its vector or graph sections have the wrong shape; rebuild the index")
        self.n = min(len(X), len(scale), len(nbr0), len(upoff), index.count)
        entry = int(index.entry) if 0 <= index.entry < min(self.n, len(index.level)) else -1  # -1: Fault.START
        top = int(index.level[entry]) if entry >= 0 else 0
        self.graph = (
            self.n,
            X.ctypes.data,
            scale.ctypes.data,
            index.dim,
            nbr0.ctypes.data,
            nbr0.shape[1],
            upoff.ctypes.data,
            nbru.ctypes.data,
            len(nbru),
            nbru.shape[1],
            entry,
            top,
        )
        self.threads = default_threads()
        self._local = threading.local()

    def _path(self) -> str:
        return getattr(self.ix, "path", "this hnsw index")

    @classmethod
    def for_index(cls, index: Any) -> HnswKernel | None:
        kernel = HNSW_SEARCH.get(index.quant)
        native = kernel.native() if kernel is not None else None
        return cls(index, native) if native is not None else None

    def _slots(self, n: int) -> list[_Slot]:
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = []
        while len(slots) < n:
            slots.append(_Slot(self.graph, self.n))
        return slots[:n]

    def search(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        s, r = self._search_codes(np.ascontiguousarray(self.ix.query_weights(q), np.float32), k, ef)
        # the kernel scores raw codes; a centred per-dimension scale adds one constant per query
        return add_query_offset(s, q, self.ix.offset), r

    def _search_codes(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        nq, d = len(q), self.ix.dim
        s = np.empty((nq, k), np.float32)
        r = np.empty((nq, k), np.int64)
        if not nq:
            return s, r
        parts = self.threads if nq >= QUERIES_PER_THREAD * self.threads else 1
        ranges = split_range(0, nq, parts)
        slots = self._slots(len(ranges))
        qa, sa, ra = _address(q), _address(s), _address(r)
        for slot, (lo, hi) in zip(slots, ranges):
            slot.claim(ef, hi - lo)
            w = slot.words
            w[_AT["Q"]] = qa + 4 * lo * d
            w[_AT["k"]] = k
            w[_AT["s_out"]] = sa + 4 * lo * k
            w[_AT["r_out"]] = ra + 8 * lo * k
        if len(slots) == 1:
            self.native.run_packed(slots[0].address, 8 * len(PARAMS), 1)
        else:
            packed = np.stack([slot.words for slot in slots])
            self.native.run_packed(packed.ctypes.data, 8 * len(PARAMS), len(slots))
        faults = [f for f in (slot.fault() for slot in slots) if f is not None]  # reads and clears each
        if faults:
            raise IndexFileError(self._path(), f"HNSW search stopped: {FAULT_PROBLEMS[faults[0]]}; rebuild the index")
        return s, r
