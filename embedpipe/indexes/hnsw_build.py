"""HNSW construction by insertion (Malkov & Yashunin), in deterministic batches.

Each node gets a random level ⌊−ln U / ln M⌋ (seeded) and is inserted as in the paper: greedy
descent from the entry point, ``search_layer`` with ``ef_construction`` on each of its layers,
the neighbour-selection heuristic for its M links, and back-links that re-run the heuristic
when a list outgrows its capacity (2M on layer 0, M above).

Insertion runs in batches so it can be parallel *and* reproducible: every node of a batch
searches the graph frozen at the batch start (in parallel, each node independently), also
scoring the batch nodes before it exactly (they are not in the graph yet); then each node's
links are written and the back-links of the batch are merged per target (in parallel, each
target independently, incoming links in node order). Nothing depends on which worker did
what, so a fixed seed gives the same graph — byte for byte — on any thread count. Batches
start at one node and grow with the graph (a node of a small graph must see most of it).

The native kernels live in `hnsw_insert_kernel`; `hnsw_insert_twin` is their numpy twin
(fallback and test oracle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from embedpipe.indexes.hnsw_build_ir import CTX, SCRATCH, pack
from embedpipe.indexes.hnsw_insert_kernel import InsertKernels
from embedpipe.indexes.hnsw_insert_twin import insert_batch_reference, link_reference

MAX_LEVEL = 15
GROWTH = 4  # batch size ≤ nodes already in the graph / GROWTH
MAX_BATCH = 128


@dataclass
class Storage:
    """Stored rows and the factors that turn them into floats: x = code·S·R[row] + O."""

    codes: np.ndarray  # (n, d) float32 or int8
    R: np.ndarray  # (n,) per-row scale (ones if none)
    S: np.ndarray  # (d,) per-dimension scale (ones if none)
    O: np.ndarray  # noqa: E741 — (d,) per-dimension offset (zeros if none)

    @property
    def quant(self) -> str:
        return "fp32" if self.codes.dtype == np.float32 else "int8"

    def floats(self, rows: np.ndarray) -> np.ndarray:
        x = self.codes[rows].astype(np.float32)
        if self.quant == "fp32":
            return x
        return x * self.S[None, :] * self.R[rows][:, None] + self.O[None, :]


@dataclass
class Graph:
    """The flat arrays of `HnswIndex` plus the entry point and top layer."""

    nbr0: np.ndarray  # (n, 2M) int32
    level: np.ndarray  # (n,) int8
    upoff: np.ndarray  # (n,) int64
    nbru: np.ndarray  # (rows, M) int32
    entry: int = -1
    maxlevel: int = -1

    @classmethod
    def empty(cls, level: np.ndarray, m: int) -> Graph:
        level = np.asarray(level, np.int8)
        upoff = np.zeros(len(level), np.int64)
        upoff[1:] = np.cumsum(level.astype(np.int64))[:-1]
        return cls(
            np.full((len(level), 2 * m), -1, np.int32),
            level,
            upoff,
            np.full((int(level.astype(np.int64).sum()), m), -1, np.int32),
        )

    def extend(self, level: np.ndarray, m: int) -> Graph:
        """This graph with room for len(level) more nodes (not yet linked)."""
        level = np.asarray(level, np.int8)
        up = np.zeros(len(level), np.int64)
        up[1:] = np.cumsum(level.astype(np.int64))[:-1]
        return Graph(
            np.concatenate([self.nbr0, np.full((len(level), 2 * m), -1, np.int32)]),
            np.concatenate([self.level, level]),
            np.concatenate([self.upoff, up + len(self.nbru)]),
            np.concatenate([self.nbru, np.full((int(level.astype(np.int64).sum()), m), -1, np.int32)]),
            self.entry,
            self.maxlevel,
        )

    def row(self, v: int, layer: int) -> np.ndarray:
        return self.nbr0[v] if layer == 0 else self.nbru[self.upoff[v] + layer - 1]


def draw_levels(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """HNSW's node levels: floor(-ln U / ln m), capped at MAX_LEVEL."""
    if m < 2:
        raise ValueError(f"HNSW levels are drawn with 1/ln(m): m must be at least 2, got {m}")
    return np.minimum((-np.log(1.0 - rng.random(n)) / math.log(m)).astype(np.int64), MAX_LEVEL).astype(np.int8)


def batches(done: int, total: int, max_batch: int = MAX_BATCH) -> list[tuple[int, int]]:
    """[lo, hi) ranges of the insertion order: 1 node first, then ≤ graph size / GROWTH."""
    out = []
    while done < total:
        size = min(max_batch, max(1, done // GROWTH), total - done)
        out.append((done, done + size))
        done += size
    return out


@dataclass
class Batch:
    """What one batch's insert phase produces: each node's forward links per layer."""

    nodes: np.ndarray  # int64 (B,)
    fwdoff: np.ndarray  # int64 (B,): row of the node's layer-0 links in fwd
    fwd: np.ndarray  # int32 (rows, M): layer l of node i at row fwdoff[i] + l


def new_batch(g: Graph, nodes: np.ndarray, m: int) -> Batch:
    nodes = np.ascontiguousarray(nodes, np.int64)
    per = g.level[nodes].astype(np.int64) + 1
    fwdoff = np.zeros(len(nodes), np.int64)
    fwdoff[1:] = np.cumsum(per)[:-1]
    return Batch(nodes, fwdoff, np.full((int(per.sum()), m), -1, np.int32))


def back_links(g: Graph, bt: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write each batch node's forward links into the graph; group the back-links by
    (layer, target), incoming in batch order: (gnode, glevel, gstart, incoming)."""
    per = g.level[bt.nodes].astype(np.int64) + 1
    src = np.repeat(np.arange(len(bt.nodes)), per)
    layer = np.arange(len(bt.fwd)) - np.repeat(bt.fwdoff, per)
    m = bt.fwd.shape[1]
    on0 = layer == 0
    g.nbr0[bt.nodes[src[on0]], :m] = bt.fwd[on0]
    up = ~on0
    g.nbru[g.upoff[bt.nodes[src[up]]] + layer[up] - 1] = bt.fwd[up]
    tgt = bt.fwd.reshape(-1)
    ok = tgt >= 0
    t, lay, s = tgt[ok].astype(np.int64), np.repeat(layer, m)[ok], np.repeat(src, m)[ok]
    order = np.lexsort((s, t, lay))
    t, lay, s = t[order], lay[order], s[order]
    starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (lay[1:] != lay[:-1])]) if len(t) else np.zeros(0, np.int64)
    gstart = np.append(starts, len(t)).astype(np.int64)
    return (
        np.ascontiguousarray(t[starts]),
        np.ascontiguousarray(lay[starts]),
        gstart,
        np.ascontiguousarray(bt.nodes[s].astype(np.int32)),
    )


def update_entry(g: Graph, nodes: np.ndarray) -> None:
    lv = g.level[nodes].astype(np.int64)
    top = int(lv.max())
    if g.entry < 0 or top > g.maxlevel:
        g.entry, g.maxlevel = int(nodes[int(np.argmax(lv))]), top


# --- driver -------------------------------------------------------------------------------
class GraphBuilder:
    """Inserts nodes into a `Graph` over `Storage`, natively when the kernels compile."""

    def __init__(
        self,
        store: Storage,
        graph: Graph,
        m: int,
        ef_construction: int,
        threads: int | None = None,
        native: bool = True,
        kernels: InsertKernels | None = None,
    ) -> None:
        from embedpipe.codegen.threads import default_threads

        if m < 2 or ef_construction < 1:  # the scratch pools and rows are sized by them
            raise ValueError(f"an HNSW build needs m >= 2 and ef_construction >= 1, got {m} and {ef_construction}")
        self.store, self.g, self.m, self.efc = store, graph, m, ef_construction
        self.kernels = kernels or (InsertKernels.get(store.quant) if native else None)
        self.threads = threads or default_threads()
        self._scratch: list[np.ndarray] = []
        self._buffers: list[Any] = []
        self._cap = 0
        self._vec: np.ndarray | None = None

    def _floats(self) -> np.ndarray:
        if self._vec is None or len(self._vec) != len(self.store.codes):
            self._vec = self.store.floats(np.arange(len(self.store.codes)))
        return self._vec

    def _scratch_for(self, cap: int) -> list[np.ndarray]:
        if cap > self._cap or len(self._scratch) != self.threads:
            self._cap = max(cap, 2 * self._cap)
            n, d = self.store.codes.shape
            self._scratch, self._buffers = [], []
            for _ in range(self.threads):
                bufs = {
                    "visited": np.zeros(n, np.int32),
                    "pool_id": np.zeros(self._cap, np.int32),
                    "pool_s": np.zeros(self._cap, np.float32),
                    "pool_x": np.zeros(self._cap, np.int8),
                    "qbuf": np.zeros(d, np.float32),
                    "cbuf": np.zeros(max(d, self._cap), np.float32),
                }
                self._buffers.append(bufs)
                self._scratch.append(pack(SCRATCH, bufs))
        return self._scratch

    def _ctx(self, **extra: Any) -> tuple[np.ndarray, list[Any]]:
        g, st = self.g, self.store
        vals = {
            "X": st.codes,
            "R": st.R,
            "S": st.S,
            "O": st.O,
            "d": st.codes.shape[1],
            "n": len(st.codes),
            "level": g.level,
            "upoff": g.upoff,
            "nbr0": g.nbr0,
            "m0": g.nbr0.shape[1],
            "nbru": g.nbru if len(g.nbru) else np.full((1, self.m), -1, np.int32),
            "mu": self.m,
            "entry": g.entry,
            "maxlevel": g.maxlevel,
            "efc": self.efc,
            "m": self.m,
            **extra,
        }
        return pack(CTX, vals), list(vals.values())  # keep the arrays alive

    def insert(self, order: np.ndarray, done: int = 0, progress: bool = False, max_batch: int = MAX_BATCH) -> None:
        """Insert the nodes `order` (rows whose levels are set) in that order into a graph
        that already holds `done` nodes."""
        order = np.asarray(order, np.int64)
        with tqdm(
            total=len(order), desc="hnsw insert", unit="vec", unit_scale=True, disable=not progress, smoothing=0.05
        ) as bar:
            pos = 0
            for lo, hi in batches(done, done + len(order), max_batch):
                nodes = order[pos : pos + hi - lo]
                pos += hi - lo
                self.insert_batch(nodes)
                bar.update(len(nodes))

    def relink(self, groups: tuple[np.ndarray, ...]) -> None:
        """Merge `groups` (gnode, glevel, gstart, incoming) into the lists, as back-links are."""
        gnode, glevel, gstart, incoming = groups
        if not len(gnode):
            return
        if self.kernels is None:
            link_reference(self.g, self._floats(), groups)
            return
        most = int(np.diff(gstart).max())
        ctx, keep = self._ctx(gnode=gnode, glevel=glevel, gstart=gstart, incoming=incoming, ngroups=len(gnode))
        self.kernels.run(
            "link", ctx, self._scratch_for(max(self.efc + 1, 2 * (self.g.nbr0.shape[1] + most))), len(gnode)
        )
        del keep

    def insert_batch(self, nodes: np.ndarray) -> None:
        g = self.g
        bt = new_batch(g, nodes, self.m)
        if self.kernels is None:
            insert_batch_reference(g, self._floats(), bt, self.efc)
        else:
            ctx, keep = self._ctx(nodes=bt.nodes, nbatch=len(bt.nodes), fwd=bt.fwd, fwdoff=bt.fwdoff)
            self.kernels.run("insert", ctx, self._scratch_for(self.efc + 1), len(bt.nodes))
            del keep
        self.relink(back_links(g, bt))
        update_entry(g, bt.nodes)


def build_graph(
    store: Storage,
    m: int,
    ef_construction: int,
    seed: int,
    progress: bool = False,
    native: bool = True,
    threads: int | None = None,
    kernels: InsertKernels | None = None,
) -> Graph:
    """A new graph over all rows of `store`, inserted in a seeded random order (natively unless
    `native` is False; `kernels` picks compiled kernels, e.g. for one ISA)."""
    n = len(store.codes)
    rng = np.random.default_rng(seed)
    g = Graph.empty(draw_levels(n, m, rng), m)
    order = rng.permutation(n)
    GraphBuilder(store, g, m, ef_construction, threads, native, kernels).insert(order, 0, progress)
    return g


def unlink_deleted(g: Graph, deleted: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop tombstoned nodes from every live node's lists and return the repair groups: each
    node that lost a neighbour gets that neighbour's live neighbours (same layer) as incoming
    candidates, so paths that ran through a deleted node are reconnected around it (merged
    and re-selected by `GraphBuilder.relink`). Tombstoned nodes keep their own lists."""
    dead = np.zeros(len(g.level), bool)
    dead[deleted] = True
    gn, gl, inc = [], [], []
    layers = [(0, np.arange(len(g.level)), g.nbr0)]
    for lv in range(1, int(g.level.max(initial=0)) + 1):
        nodes = np.flatnonzero(g.level >= lv)
        layers.append((lv, nodes, g.nbru[g.upoff[nodes] + lv - 1]))
    for lv, nodes, rows in layers:
        hit = (rows >= 0) & dead[np.maximum(rows, 0)]
        affected = np.flatnonzero(hit.any(axis=1) & ~dead[nodes])
        for i in affected.tolist():
            u, row = int(nodes[i]), rows[i]
            lost = row[hit[i]]
            keep = row[(row >= 0) & ~hit[i]]
            via = np.concatenate([g.row(int(w), lv) for w in lost.tolist()])
            via = via[(via >= 0) & (via != u)]
            via = via[~dead[via] & ~np.isin(via, keep)]
            _, first = np.unique(via, return_index=True)
            new = np.full(len(row), -1, np.int32)
            new[: len(keep)] = keep
            target = g.nbr0 if lv == 0 else g.nbru
            target[u if lv == 0 else g.upoff[u] + lv - 1] = new
            if len(first):
                gn.append(u)
                gl.append(lv)
                inc.append(via[np.sort(first)].astype(np.int32))
    gstart = np.zeros(len(inc) + 1, np.int64)
    gstart[1:] = np.cumsum([len(v) for v in inc])
    return (
        np.asarray(gn, np.int64),
        np.asarray(gl, np.int64),
        gstart,
        np.concatenate(inc) if inc else np.zeros(0, np.int32),
    )
