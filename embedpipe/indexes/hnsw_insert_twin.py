"""The numpy twin of HNSW insertion (``hnsw_insert_kernel``): one batch's insert phase (greedy
descent, ``search_layer`` on the graph frozen at the batch start plus the batch nodes before
each node, the neighbour-selection heuristic) and link phase (back-links merged per target,
re-selected when a list overflows), in the order ``hnsw_build`` documents. The fallback where
the kernels cannot be built, and their test oracle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embedpipe.indexes.hnsw_build import Batch, Graph


def _push(pool: list[tuple[float, int]], cap: int, s: float, v: int) -> int:
    """Insert (s, v) after equal scores into a descending pool of ≤ cap; slot or -1."""
    if len(pool) >= cap and s <= pool[-1][0]:
        return -1
    p = len(pool)
    while p > 0 and pool[p - 1][0] < s:
        p -= 1
    pool.insert(p, (s, v))
    del pool[cap:]
    return p


def _select(vec: np.ndarray, cand: list[tuple[float, int]], m: int) -> list[int]:
    kept: list[int] = []
    run_score, run_start = None, 0  # kept[run_start:] share the current candidate's score
    for s, c in cand:
        if len(kept) >= m:
            break
        if s != run_score:
            run_score, run_start = s, len(kept)
        run_full = len(kept) - run_start >= copy_cap(m)
        if all(_keeps(float(vec[c] @ vec[r]), s, run_full and j >= run_start) for j, r in enumerate(kept)):
            kept.append(c)
    return kept


def copy_cap(m: int) -> int:
    """How many of a node's m links may go to exact copies of one vector (see `_keeps`)."""
    return max(1, m // 2)


def _keeps(to_kept: float, to_node: float, copy_slots_full: bool) -> bool:
    """The heuristic's test against one kept neighbour: c stays while it is no closer to it than
    to the node. An exact tie with a kept neighbour of c's own score means c, that neighbour and
    the node are equidistant: exact copies, in practice. Copies beyond `copy_cap` are dropped, so
    a vector repeated more than m times (a corpus's boilerplate) does not spend every link on
    its copies and cut them off from the rest of the graph, while half the links still join the
    copies to each other for a query that asks for them."""
    return to_kept < to_node or (to_kept == to_node and not copy_slots_full)


def _search_layer(g: Graph, vec: np.ndarray, q: np.ndarray, layer: int, start: int, ef: int) -> list[tuple[float, int]]:
    pool: list[tuple[float, int]] = [(float(vec[start] @ q), start)]
    expanded = {start: False}
    visited = {start}
    k = 0
    while k < len(pool):
        u = pool[k][1]
        if expanded.get(u):
            k += 1
            continue
        expanded[u] = True
        nk = len(pool)
        for v in g.row(u, layer).tolist():
            if v < 0:
                break
            if v in visited:
                continue
            visited.add(v)
            p = _push(pool, ef, float(vec[v] @ q), v)
            if p >= 0:
                expanded[v] = False
                nk = min(nk, p)
        k = nk if nk <= k else k + 1
    return pool


def insert_batch_reference(g: Graph, vec: np.ndarray, bt: Batch, efc: int) -> None:
    """The insert phase of one batch in numpy: fills bt.fwd (the kernels' oracle)."""
    m = bt.fwd.shape[1]
    for i, u in enumerate(bt.nodes.tolist()):
        q, lu = vec[u], int(g.level[u])
        cur = g.entry
        if cur >= 0:
            cur_s = float(vec[cur] @ q)
            for layer in range(g.maxlevel, lu, -1):
                changed = True
                while changed:
                    changed = False
                    for v in g.row(cur, layer).tolist():
                        if v < 0:
                            break
                        s = float(vec[v] @ q)
                        if s > cur_s:
                            cur, cur_s, changed = v, s, True
        for layer in range(lu, -1, -1):
            pool: list[tuple[float, int]] = []
            if cur >= 0 and layer <= g.maxlevel:
                pool = _search_layer(g, vec, q, layer, cur, efc)
                cur = pool[0][1]
            for w in bt.nodes[:i].tolist():
                if g.level[w] >= layer:
                    _push(pool, efc, float(vec[w] @ q), w)
            kept = _select(vec, pool, m)
            bt.fwd[bt.fwdoff[i] + layer, : len(kept)] = kept


def link_reference(g: Graph, vec: np.ndarray, groups: tuple[np.ndarray, ...]) -> None:
    """The link phase of one batch in numpy (the kernels' oracle)."""
    gnode, glevel, gstart, incoming = groups
    for k, (w, layer) in enumerate(zip(gnode.tolist(), glevel.tolist())):
        row = g.row(w, layer)
        old = row[row >= 0].tolist()
        cand = old + [v for v in incoming[gstart[k] : gstart[k + 1]].tolist() if v not in old]
        if len(cand) > len(row):
            pool: list[tuple[float, int]] = []
            for v in cand:
                _push(pool, len(cand), float(vec[v] @ vec[w]), v)
            cand = _select(vec, pool, len(row))
        row[:] = -1
        row[: len(cand)] = cand
