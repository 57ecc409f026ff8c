"""Annoy search on the native kernel of ``annoy_search_ir``: its declaration, and per thread
the heap, visited tags and candidate buffers of one index (``AnnoyScratch``), a fault turned
into a clear error naming the file. `AnnoyIndex._candidates` in Python is the reference this
replaces (used when `ANNOY_SEARCH.native()` is None).
"""

from __future__ import annotations

import numpy as np

from embedpipe.codegen.irutil import I64
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.indexes.annoy_search_ir import PARAMS, Fault, emit
from embedpipe.indexes.format import IndexFileError

ANNOY_SEARCH = Kernel("annoy_search", PARAMS, emit, ret=I64)
ANNOY_MODULE = KernelModule("ep_annoy", [ANNOY_SEARCH])


FAULT_PROBLEMS = {
    Fault.NODE: "a tree node points outside the file",
    Fault.ITEM: "a leaf names an item id outside the items",
    Fault.KIND: "a tree node has fewer than one descendant",
    Fault.HEAP: "a tree has a cycle",
    Fault.OUTPUT: "a tree yields more candidates than there are items",
}


class AnnoyScratch:
    """Per-thread heap, visited tags and candidate buffers for one index's arrays.

    The kernel gets the node and item counts it may index (the smallest of the arrays it
    reads), so a tree the validator did not see ends in `IndexFileError`, never in an
    out-of-bounds access. Addresses are taken once (``ndarray.ctypes.data`` is not free per query).
    """

    def __init__(self, nodes: np.ndarray, dim: int, n_items: int, roots: np.ndarray, path: str) -> None:
        if nodes.ndim != 2 or nodes.shape[1] != dim + 3 or not nodes.flags.c_contiguous:
            raise IndexFileError(path, f"annoy nodes have shape {nodes.shape} for dim {dim}; rebuild the index")
        self.nodes, self.roots, self.dim, self.path = nodes, np.ascontiguousarray(roots, np.int32), dim, path
        self.n_items = max(0, min(n_items, len(nodes)))
        self.K = dim + 2
        self.hp = np.empty(len(nodes) + 8, np.float32)
        self.hi = np.empty(len(nodes) + 8, np.int32)
        self.visited = np.zeros(self.n_items, np.int32)
        self.tag = 0
        self.out_id = np.empty(0, np.int32)
        self.out_s = np.empty(0, np.float32)
        self._fixed = (nodes.ctypes.data, len(nodes), nodes.shape[1], dim, self.n_items, self.roots.ctypes.data)
        self._heap = (self.hp.ctypes.data, self.hi.ctypes.data, len(self.hp), self.visited.ctypes.data)
        self._out = (0, 0, 0)

    def run(self, fn: Native, q: np.ndarray, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate item ids and their cosines for query ``q`` (at most ``search_k`` + K)."""
        need = max(1, min(self.n_items, search_k + self.K))
        if len(self.out_id) < need:
            self.out_id = np.empty(need, np.int32)
            self.out_s = np.empty(need, np.float32)
            self._out = (self.out_id.ctypes.data, self.out_s.ctypes.data, need)
        self.tag += 1
        if self.tag >= 2**31 - 1:
            self.visited[:] = 0
            self.tag = 1
        q = np.ascontiguousarray(q, np.float32)
        hp, hi, cap, visited = self._heap
        out_id, out_s, out_cap = self._out
        got = fn(
            *self._fixed,
            len(self.roots),
            q.ctypes.data,
            search_k,
            hp,
            hi,
            cap,
            visited,
            self.tag,
            out_id,
            out_s,
            out_cap,
        )
        if got < 0:
            raise IndexFileError(self.path, f"annoy search stopped: {FAULT_PROBLEMS[Fault(-got)]}; rebuild the index")
        return self.out_id[:got], self.out_s[:got]
