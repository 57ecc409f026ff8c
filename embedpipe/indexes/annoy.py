"""Annoy-style random-projection forest, stored in Spotify Annoy's on-disk layout (angular).

The ``.ann`` file is exactly what ``annoy.AnnoyIndex(f, "angular").save`` writes, so either
library opens the other's files. Each node is ``s = 12 + 4f`` bytes::

    int32 n_descendants | int32 children[2] (items: float32 |v|² in children[0]) | float32 v[f]

* nodes 0..n-1 are the items (n_descendants = 1, v = the vector);
* split nodes: v = unit hyperplane normal, children[1] holds the side with v·x > 0;
* leaf buckets: n_descendants ≤ K = f + 2 item ids written over children[] and v[];
* every tree root is copied to the end of the file; a reader finds the roots as the trailing
  run of nodes whose n_descendants equals the item count.

Our ids, metadata, kept columns and a CRC of the ``.ann`` file live in a sidecar
``PATH.ids`` (an embedpipe container), so the ``.ann`` file itself stays pure Annoy.
"""

from __future__ import annotations

import functools
import heapq
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from embedpipe.codegen.pairdot import pairdot
from embedpipe.codegen.rowdot import rowdot
from embedpipe.codegen.twomeans import two_means
from embedpipe.indexes.annoy_kernel import ANNOY_SEARCH, AnnoyScratch
from embedpipe.indexes.base import IdTable, IndexMeta, StringTable, VectorIndex, normalize_rows, pad_topk, topk_desc
from embedpipe.indexes.format import IndexFileError, atomic_write, crc32_of, read_container, write_container
from embedpipe.indexes.params import SEED_PARAM, Param, file_bounds
from embedpipe.indexes.validate import annoy_roots, check_index, leaf_items_in_range

SIDECAR_SUFFIX = ".ids"
HEADER_INTS = 3  # n_descendants, children[0], children[1]
MIN_ITEMS = 2  # roots are found as the trailing run of nodes whose n_descendants is the item count
SPLIT_ATTEMPTS = 3
MAX_IMBALANCE = 0.95
TWO_MEANS_SAMPLE = 256
TWO_MEANS_ITERS = 6
# Annoy's own default (-1: trees × k) inspects less than one leaf of f + 2 items at 768 dims
SEARCH_K = Param(
    "search_k",
    int,
    2000,
    "candidate items inspected per query (-1: Annoy's "
    "trees × k, weak with 768-d leaves of 770 items); the build stores it as the "
    "default.",
    **{**file_bounds("annoy", "search_k"), "minimum": 1},
    sentinels=(-1,),
)


class _TreeBuilder:
    """Grows trees level by level: every open node of a level is split in one vectorized pass
    (margins of all its items at once), children get node numbers before their parents are
    written, and the result is a list of node rows (int32 words)."""

    def __init__(self, x: np.ndarray, seed: int) -> None:
        self.x = x
        self.n, self.f = x.shape
        self.K = self.f + 2
        self.rng = np.random.default_rng(seed)
        self.rows: list[np.ndarray] = []

    def _alloc(self) -> int:
        self.rows.append(np.zeros(HEADER_INTS + self.f, np.int32))
        return self.n + len(self.rows) - 1

    def _draw(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A node's 2-means sample (at most `TWO_MEANS_SAMPLE` of its rows) and two of them as
        the starting centroids."""
        if len(idx) > TWO_MEANS_SAMPLE:
            idx = self.rng.choice(idx, TWO_MEANS_SAMPLE, replace=False)
        i, j = self.rng.choice(len(idx), 2, replace=False)
        return idx, self.x[idx[[i, j]]]

    def _normals(self, draws: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Unit normals between the two spherical-2-means centroids of each drawn sample (Annoy's
        idea, run as a few Lloyd steps over every node of a level in one native call instead of
        200 sequential updates per node)."""
        sample = np.concatenate([idx for idx, _ in draws])
        starts = np.cumsum([0] + [len(idx) for idx, _ in draws])
        cent = two_means(self.x, sample, starts, np.stack([c for _, c in draws]), TWO_MEANS_ITERS)
        return normalize_rows(cent[:, 0] - cent[:, 1], in_place=True)

    def _place(self, idx: np.ndarray, is_root: bool, todo: list) -> int:
        """Node number for a subtree over `idx`: an item, a leaf bucket or a split to do."""
        if len(idx) == 1 and not is_root:
            return int(idx[0])
        node = self._alloc()
        if len(idx) <= self.K and (not is_root or self.n <= self.K or len(idx) == 1):
            row = self.rows[node - self.n]
            row[0] = len(idx)
            row[1 : 1 + len(idx)] = idx
        else:
            todo.append((node, idx))
        return node

    def grow(self) -> int:
        todo: list[tuple[int, np.ndarray]] = []
        root = self._place(np.arange(self.n), True, todo)
        while todo:
            level, todo = todo, []
            normals = self._normals([self._draw(idx) for _, idx in level])
            members = np.concatenate([idx for _, idx in level])
            owner = np.repeat(np.arange(len(level)), [len(idx) for _, idx in level])
            margins = pairdot(self.x, members, normals, owner)  # no gathered copy of the rows
            bounds = np.cumsum([0] + [len(idx) for _, idx in level])
            for t, (node, idx) in enumerate(level):
                side = margins[bounds[t] : bounds[t + 1]] > 0
                normal = normals[t]
                for _ in range(SPLIT_ATTEMPTS - 1):
                    ones = int(side.sum())
                    if max(ones, len(idx) - ones) / len(idx) <= MAX_IMBALANCE:
                        break
                    normal = self._normals([self._draw(idx)])[0]
                    side = self.x[idx] @ normal > 0
                ones = int(side.sum())
                if max(ones, len(idx) - ones) / len(idx) > MAX_IMBALANCE:
                    normal = np.zeros(self.f, np.float32)  # random sides, as Annoy does
                    side = self.rng.random(len(idx)) < 0.5
                    if side.all() or not side.any():
                        side[: len(idx) // 2] = ~side[: len(idx) // 2]
                row = self.rows[node - self.n]
                row[0] = len(idx)
                row[1] = self._place(idx[~side], False, todo)
                row[2] = self._place(idx[side], False, todo)
                row[HEADER_INTS:] = normal.view(np.int32)
        return root


def build_nodes(x: np.ndarray, n_trees: int, seed: int = 0, progress: bool = False) -> np.ndarray:
    """The full Annoy node array (int32, (n_nodes, 3 + f)) for unit vectors `x`."""
    n, f = x.shape
    items = np.zeros((n, HEADER_INTS + f), np.int32)
    items[:, 0] = 1
    items[:, 1] = np.einsum("ij,ij->i", x, x).astype(np.float32).view(np.int32)
    items[:, HEADER_INTS:] = x.view(np.int32)
    tb = _TreeBuilder(x, seed)
    from tqdm import tqdm  # only a build shows progress: searching does not import it

    roots = [tb.grow() for _ in tqdm(range(n_trees), desc="annoy trees", disable=not progress)]
    tree = np.stack(tb.rows) if tb.rows else np.zeros((0, HEADER_INTS + f), np.int32)
    all_nodes = np.concatenate([items, tree])
    return np.concatenate([all_nodes, all_nodes[roots]])


def find_roots(nodes: np.ndarray) -> tuple[list[int], int]:
    """Annoy's loader: the trailing run of equal n_descendants are the root copies."""
    nd = nodes[:, 0]
    roots: list[int] = []
    m = -1
    for i in range(len(nodes) - 1, -1, -1):
        if m == -1 or nd[i] == m:
            roots.append(i)
            m = int(nd[i])
        else:
            break
    if len(roots) > 1 and nodes[roots[0], 1] == nodes[roots[-1], 1]:
        roots.pop()  # the last original root precedes the copies
    return roots, m


class AnnoyIndex(VectorIndex):
    """Forest of random-hyperplane trees; best-first search over all trees, exact re-rank."""

    kind: ClassVar[str] = "annoy"
    build_params: ClassVar[tuple[Param, ...]] = (
        Param(
            "n_trees", int, 50, "number of trees.", flag="--trees", **{**file_bounds("annoy", "n_trees"), "minimum": 1}
        ),
        SEARCH_K,
        SEED_PARAM,
    )
    search_params: ClassVar[tuple[Param, ...]] = (SEARCH_K,)

    def __init__(
        self,
        nodes: np.ndarray,
        dim: int,
        ids: IdTable,
        meta: IndexMeta,
        columns: dict[str, StringTable] | None = None,
        search_k: int = -1,
        n_trees: int = 0,
    ) -> None:
        super().__init__(dim, "fp32", ids, meta, columns)
        self.nodes = nodes
        self.roots, self.n_items = find_roots(nodes)
        self.K = dim + 2
        self.search_k, self.n_trees = search_k, n_trees or len(self.roots)
        floats = nodes.view(np.float32)
        self.items = floats[: self.n_items, HEADER_INTS:]
        self._roots_arr = np.asarray(self.roots, np.int32)
        self._local = threading.local()
        self.use_jit = True

    @functools.cached_property
    def item_norm(self) -> np.ndarray:
        """|v| of every item (the Python traversal's scoring; the kernel reads it in place)."""
        return np.sqrt(np.maximum(self.nodes.view(np.float32)[: self.n_items, 1], 0))

    @functools.cached_property
    def _tree(self) -> tuple[list[int], list[int], list[int], dict[int, int], np.ndarray]:
        """The Python traversal's view of the nodes (kinds, children, split rows and their
        hyperplanes), built on first use: the native kernel never needs it, so a load does not
        pay for it."""
        nodes = self.nodes
        split = np.flatnonzero(nodes[:, 0] > self.K)
        return (
            nodes[:, 0].tolist(),
            nodes[:, 1].tolist(),
            nodes[:, 2].tolist(),
            {int(s): i for i, s in enumerate(split)},
            nodes.view(np.float32)[split, HEADER_INTS:],
        )

    def _scratch(self) -> AnnoyScratch:
        sc = getattr(self._local, "scratch", None)
        if sc is None:
            path = getattr(self, "path", "this annoy index")
            sc = self._local.scratch = AnnoyScratch(self.nodes, self.dim, self.n_items, self._roots_arr, path)
        return sc

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
    ) -> AnnoyIndex:
        """Grow the forest over unit `vectors`; `params` are the declared `build_params`."""
        p = cls.build_settings(params)
        if len(vectors) < MIN_ITEMS:
            raise ValueError(
                f"an annoy index needs at least {MIN_ITEMS} vectors, got {len(vectors)}: in Spotify's layout "
                "a lone item's node cannot be told from the tree roots, so no reader could load the file"
            )
        nodes = build_nodes(np.ascontiguousarray(vectors, np.float32), p["n_trees"], p["seed"], progress)
        return cls(nodes, vectors.shape[1], ids, meta, columns, p["search_k"], p["n_trees"])

    # --- search -------------------------------------------------------------------------
    def _candidates(self, margins: list[float] | None, q: np.ndarray, limit: int) -> np.ndarray:
        nd, c0, c1, pos, split_v = self._tree
        K, n_items = self.K, self.n_items
        heap = [(-np.inf, r) for r in self.roots]
        found: list[Any] = []
        count = 0
        while heap and count < limit:
            negd, i = heapq.heappop(heap)
            d = -negd
            n = nd[i]
            if n == 1 and i < n_items:
                found.append((i,))
                count += 1
            elif n <= K:
                found.append(self.nodes[i, 1 : 1 + n])
                count += n
            else:
                m = margins[pos[i]] if margins is not None else float(split_v[pos[i]] @ q)
                heapq.heappush(heap, (-min(d, m), c1[i]))
                heapq.heappush(heap, (-min(d, -m), c0[i]))
        if not found:
            return np.zeros(0, np.int64)
        ids = np.unique(np.concatenate([np.asarray(f, np.int64) for f in found]))
        return leaf_items_in_range(getattr(self, "path", "this annoy index"), ids, n_items)

    def _search_rows(self, q: np.ndarray, k: int, search_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        limit = search_k if search_k is not None else self.search_k
        if limit is None or limit < 0:
            limit = k * self.n_trees
        elif search_k is None:  # the stored default is sized for small k: never below Annoy's own
            limit = max(limit, k * self.n_trees)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        kernel = ANNOY_SEARCH.native() if self.use_jit else None
        for qi in range(len(q)):
            if kernel is not None:
                scratch = self._scratch()
                cand, scores = scratch.run(kernel, q[qi], limit)
            else:
                split_v = self._tree[4]
                eager = 0 < len(split_v) <= 4 * limit  # margins of every split node at once
                m = rowdot(split_v, q[qi]).tolist() if eager else None
                cand = self._candidates(m, q[qi], limit)
                scores = rowdot(self.items[cand], q[qi]) / np.maximum(self.item_norm[cand], 1e-30)
            if len(cand) == 0:
                continue
            s, cols = topk_desc(scores[None, :], k)
            out_s[qi] = s[0]
            out_r[qi] = np.where(cols[0] >= 0, cand[np.maximum(cols[0], 0)], -1)
        return pad_topk(out_s, out_r, k)

    # --- files --------------------------------------------------------------------------
    @staticmethod
    def sidecar(path: str | os.PathLike) -> Path:
        return Path(str(path) + SIDECAR_SUFFIX)

    @classmethod
    def saved_files(cls, path: str | os.PathLike) -> list[Path]:
        return [Path(path), cls.sidecar(path)]

    def save(self, path: str | os.PathLike) -> None:
        data = np.ascontiguousarray(self.nodes)
        atomic_write(path, lambda fh: fh.write(memoryview(data.reshape(-1).view(np.uint8))))
        header = dict(
            self.common_header(),
            params={"n_trees": self.n_trees, "search_k": self.search_k},
            ann_file=Path(path).name,
            ann_size=int(data.nbytes),
            ann_crc32=crc32_of(data.reshape(-1).view(np.uint8)),
        )
        write_container(self.sidecar(path), header, self.common_sections())

    @staticmethod
    def _map_nodes(path: Path, dim: int) -> np.ndarray:
        row_bytes = 4 * (HEADER_INTS + dim)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IndexFileError(path, "no such annoy file") from None
        if size == 0 or size % row_bytes:
            raise IndexFileError(
                path,
                f"size {size} is not a multiple of the {row_bytes}-byte "
                f"angular node for dim {dim} (wrong dim, metric or a "
                "truncated file)",
            )
        return np.asarray(np.memmap(path, dtype=np.int32, mode="r")).reshape(-1, HEADER_INTS + dim)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> AnnoyIndex:
        path = Path(path)
        header, sec = read_container(cls.sidecar(path), expected_type=cls.kind, verify=verify)
        ids, meta, cols = cls.common_from(cls.sidecar(path), header, sec)
        nodes = cls._map_nodes(path, header["dim"])
        if nodes.nbytes != header["ann_size"]:
            raise IndexFileError(
                path, f"annoy file has {nodes.nbytes} bytes, sidecar says {header['ann_size']} (truncated or replaced)"
            )
        if verify and crc32_of(nodes.reshape(-1).view(np.uint8)) != header["ann_crc32"]:
            raise IndexFileError(path, "checksum mismatch: the annoy file is corrupt or does not belong to its sidecar")
        p = header.get("params", {})
        index = cls(nodes, header["dim"], ids, meta, cols, p.get("search_k", -1), p.get("n_trees", 0))
        if index.n_items != header["count"]:
            raise IndexFileError(path, f"annoy roots cover {index.n_items} items, sidecar says {header['count']}")
        return check_index(path, index)

    @classmethod
    def load_spotify(cls, path: str | os.PathLike, dim: int, search_k: int = -1) -> AnnoyIndex:
        """Open a file written by Spotify annoy (no sidecar): ids are the annoy item numbers."""
        path = Path(path)
        nodes = cls._map_nodes(path, dim)
        roots, n_items = annoy_roots(path, nodes)
        return check_index(
            path, cls(nodes, dim, IdTable.from_values(None, n_items), IndexMeta(source_dim=dim), None, search_k)
        )
