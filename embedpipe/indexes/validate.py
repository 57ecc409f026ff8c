"""Check every structural value the search kernels follow, once, when an index is opened.

The JIT kernels index raw arrays with values read from the file (Annoy child and item ids,
HNSW neighbour ids, levels, upper-layer row offsets, the entry point). A checksum only proves
the bytes are the ones that were written; a Spotify ``.ann`` file has none, `verify=False`
skips it, and a buggy writer checksums its own bad values. So each loader calls
`check_index` before the index can be searched: vectorized numpy passes over the graph or
tree (no Python loop per node) that either prove every value in range or raise
IndexFileError naming the file, the value and what to do.

Vectors themselves are not scanned (that is a full read of the file); a non-finite vector
is caught by the finite check on search results instead.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from embedpipe.indexes.format import IndexFileError

REBUILD = "rebuild the index"
CHUNK = 1 << 18  # elements per range check: 1 MB of int32 stays in L2
MAX_LEVEL = 63  # levels are drawn as ⌊-ln U / ln M⌋: even M = 2 with 10^12 nodes stays below 40


def _fail(path: Any, problem: str) -> None:
    raise IndexFileError(path, f"{problem}; {REBUILD}")


def _expect(path: Any, name: str, arr: Any, dtype: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.shape != shape:
        got = f"{arr.dtype.str} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        _fail(path, f"section {name} is {got}, expected {np.dtype(dtype).str} {shape}")


def _ids_in(path: Any, name: str, values: np.ndarray, n: int, allow_missing: bool) -> None:
    """Every value of `values` in [0, n) (or -1 = empty slot when `allow_missing`)."""
    lo = -1 if allow_missing else 0
    flat = values.reshape(-1)
    # min and max of cache-sized chunks: no temporaries, and the second pass reads from cache
    for start in range(0, len(flat), CHUNK):
        part = flat[start : start + CHUNK]
        if part.min() < lo or part.max() >= n:
            bad = part[(part < lo) | (part >= n)][0]
            _fail(path, f"{name} holds node id {int(bad)} (valid: {lo}..{n - 1})")


def check_strings(path: Any, name: str, offsets: np.ndarray, blob: np.ndarray, n: int) -> None:
    """A string table: n + 1 non-decreasing int64 offsets from 0 to the end of its blob."""
    _expect(path, f"{name}.offsets", offsets, np.int64, (n + 1,))
    if blob.dtype != np.uint8 or blob.ndim != 1:
        _fail(path, f"section {name}.blob is {blob.dtype.str} {blob.shape}, expected bytes")
    if offsets[0] != 0 or offsets[-1] != len(blob) or (n and (np.diff(offsets) < 0).any()):
        _fail(path, f"string table {name} has offsets outside its {len(blob)}-byte blob")


def check_common(path: Any, index: Any) -> None:
    """Ids and kept columns (every index type)."""
    n = index.count
    if index.ids.ints is not None:
        _expect(path, "ids", np.asarray(index.ids.ints), np.int64, (n,))
    else:
        check_strings(path, "ids", index.ids.strings.offsets, index.ids.strings.blob, n)
        try:
            codecs.utf_8_decode(index.ids.strings.blob, "strict", True)
        except UnicodeDecodeError as exc:
            _fail(path, f"string ids are not valid UTF-8 (byte {exc.start} of the id blob)")
    for col, table in index.columns.items():
        check_strings(path, f"col.{col}", table.offsets, table.blob, n)


def check_vectors(path: Any, index: Any, scale_mode: str) -> None:
    """Stored codes, their scale and (centred per-dimension scales) offset."""
    from embedpipe.indexes.quant import STORAGE_TYPES

    spec = STORAGE_TYPES.get(index.quant)
    if spec is None:
        _fail(path, f"unknown quant {index.quant!r}")
    n, d = index.count, index.dim
    _expect(path, "codes", index.codes, spec.dtype, (n, d))
    if spec.qmax:
        _expect(path, "scale", np.asarray(index.scale), np.float32, (n,) if scale_mode == "vector" else (d,))
        if scale_mode == "dim" and len(index.offset):
            _expect(path, "offset", np.asarray(index.offset), np.float32, (d,))
        for name, arr in (("scale", index.scale), ("offset", index.offset)):
            if len(arr) and not np.isfinite(arr).all():
                _fail(path, f"section {name} holds NaN or infinite values")


def check_annoy(path: Any, index: Any) -> None:
    """Walk every tree from its root copy, one level of all trees at a time.

    Proves what the traversal relies on: roots and split children are node numbers in the
    file, item nodes (n_descendants = 1, number < n_items) are reached as items, leaf buckets
    hold 1..K ids, and no tree node is reached twice (a cycle or a shared subtree would
    overflow the kernel's heap of n_nodes entries). The item ids inside leaf buckets (about
    n_items per tree, most of the tree bytes) are checked where they are read — by the search
    kernel and by `leaf_items_in_range` in the Python traversal — not in a load-time pass.
    """
    nodes, K = index.nodes, index.K
    n_nodes, n_items = len(nodes), index.n_items
    if nodes.ndim != 2 or nodes.shape[1] != K + 1:
        _fail(path, f"annoy nodes have shape {nodes.shape} for dim {index.dim}")
    roots = np.asarray(index.roots, np.int64)
    if not len(roots) or n_items < 1 or n_items + len(roots) > n_nodes:
        _fail(path, f"no annoy tree roots found ({len(roots)} roots over {n_items} items in {n_nodes} nodes)")
    nd = nodes[:, 0]
    seen = np.zeros(n_nodes, bool)
    stamp = np.empty(n_nodes, np.int32)  # position in the current level (duplicates overwrite)
    frontier = roots
    while len(frontier):
        kind = nd[frontier].astype(np.int64)
        item = frontier < n_items
        if (item & (kind != 1)).any():
            bad = frontier[item & (kind != 1)][0]
            _fail(path, f"annoy item node {int(bad)} has n_descendants {int(nd[bad])} (expected 1)")
        inner = frontier[~item]
        kind = kind[~item]
        if (kind < 1).any():
            _fail(path, f"annoy node {int(inner[kind < 1][0])} has n_descendants {int(kind[kind < 1][0])}")
        pos = np.arange(len(inner), dtype=np.int32)
        stamp[inner] = pos
        if seen[inner].any() or (stamp[inner] != pos).any():  # reached on an earlier level, or twice on this one
            _fail(path, "an annoy tree node is reached twice (a cycle or a shared subtree)")
        seen[inner] = True
        leaf = kind <= K
        split = inner[~leaf]
        children = nodes[split, 1:3].astype(np.int64).reshape(-1)
        _ids_in(path, "an annoy split node", children, n_nodes, allow_missing=False)
        frontier = children


def check_hnsw(path: Any, index: Any) -> None:
    """Graph arrays, levels, upper-layer rows and the entry point of an HNSW index.

    The kernel descends from ``level[entry]`` reading row ``upoff[u] + layer - 1`` of every
    node u it reaches on ``layer``; a node is reached on a layer only through a neighbour list
    of that layer. So: every row of every node with level ≥ 1 lies inside ``nbru``, and every
    neighbour listed on layer l exists and has level ≥ l.

    Layer-0 neighbour ids (n × 2M, the bulk of the graph) are checked where they are followed
    instead: the search kernel's end-of-list test is an unsigned compare against n, and the
    numpy reference checks each list it reads. A load-time pass over them alone costs more
    than the whole load-time budget (2 %) on a checksummed load.
    """
    n = index.count
    _expect(path, "level", index.level, np.int8, (n,))
    _expect(path, "upoff", index.upoff, np.int64, (n,))
    if index.nbr0.dtype != np.int32 or index.nbr0.ndim != 2 or len(index.nbr0) != n or index.nbr0.shape[1] < 1:
        _fail(path, f"section nbr0 is {index.nbr0.dtype.str} {index.nbr0.shape}, expected int32 ({n}, 2M)")
    nbru = index.nbru
    if nbru.dtype != np.int32 or nbru.ndim != 2 or (len(nbru) and nbru.shape[1] < 1):
        _fail(path, f"section nbru is {nbru.dtype.str} {nbru.shape}, expected int32 (rows, M)")
    if n == 0:
        return
    if not 0 <= index.entry < n:
        _fail(path, f"HNSW entry point {index.entry} is not a node (0..{n - 1})")
    level = index.level  # int8: no widened copy
    top = int(level.view(np.uint8).max())  # one pass: a negative level reads as >= 128
    if top > MAX_LEVEL:
        _fail(path, f"HNSW levels range {level.min()}..{level.max()} (valid 0..{MAX_LEVEL})")
    if level[index.entry] != top:
        _fail(path, f"HNSW entry point {index.entry} is on level {level[index.entry]}, below the top level {top}")
    owners = np.flatnonzero(level > 0)
    if not len(owners):
        return
    counts = level[owners].astype(np.int64)
    owner = np.repeat(owners, counts)
    layer = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    rows = index.upoff[owner] + layer - 1
    if rows.min() < 0 or rows.max() >= len(nbru):
        bad = owner[(rows < 0) | (rows >= len(nbru))][0]
        _fail(
            path,
            f"HNSW node {int(bad)} has upper-layer rows at {int(index.upoff[bad])}, "
            f"outside the {len(nbru)} rows stored",
        )
    nb = nbru[rows]
    _ids_in(path, "HNSW upper layers", nb, n, allow_missing=True)
    # -1 (no link) reads the last node's level; those slots are masked out
    if ((level[nb] < layer.astype(np.int8)[:, None]) & (nb >= 0)).any():
        _fail(path, "an HNSW upper-layer list names a node that is not on that layer")


def check_hnsw_width(path: Any, index: Any) -> None:
    """M (within bounds by the header schema) matches the neighbour-list widths, 2M on layer 0
    and M above: an update's kernels write rows of those widths."""
    m = index.params["m"]
    if index.nbr0.shape[1] != 2 * m or (len(index.nbru) and index.nbru.shape[1] != m):
        above = index.nbru.shape[1] if len(index.nbru) else "-"
        _fail(path, f"HNSW m={m} does not match its neighbour lists ({index.nbr0.shape[1]} on layer 0, {above} above)")


def check_layer0(path: Any, index: Any) -> None:
    """Every layer-0 neighbour id in [-1, n): before native code that has no bounds checks of
    its own (the insertion kernels of an update) follows an existing graph."""
    _ids_in(path, "HNSW layer 0", index.nbr0, index.count, allow_missing=True)


def _check_brute(path: Any, index: Any) -> None:
    check_vectors(path, index, index.scale_mode)


def _check_annoy(path: Any, index: Any) -> None:
    check_annoy(path, index)


def _check_hnsw(path: Any, index: Any) -> None:
    check_vectors(path, index, index.scale_mode)
    check_hnsw(path, index)
    check_hnsw_width(path, index)


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "brute": _check_brute,
    "annoy": _check_annoy,
    "hnsw": _check_hnsw,
}


def check_index(path: Any, index: Any) -> Any:
    """Validate a freshly loaded index (any registered kind); returns it for chaining. The
    index remembers `path` so later errors (non-finite results) can name the file."""
    check_common(path, index)
    CHECKS[index.kind](path, index)
    index.path = str(path)
    return index


def check_results(index: Any, scores: np.ndarray, rows: np.ndarray) -> None:
    """Search results must be finite: a NaN or infinite score means a corrupt stored vector.
    One reduction per call (the -inf padding of missing hits takes the slow path)."""
    if math.isfinite(float(scores.sum(dtype=np.float64))):
        return
    hit = rows >= 0
    if hit.any() and not np.isfinite(scores[hit]).all():
        raise IndexFileError(
            getattr(index, "path", f"this {index.kind} index"),
            "a stored vector is NaN or infinite (the file is corrupt); rebuild the index",
        )


def annoy_roots(path: Any, nodes: np.ndarray) -> tuple[list[int], int]:
    """Annoy's root discovery, refused when the roots cannot describe this file (checked before
    anything is sized by the item count they imply)."""
    from embedpipe.indexes.annoy import find_roots

    roots, n_items = find_roots(nodes)
    if not roots or not 1 <= n_items <= len(nodes) - len(roots):
        _fail(
            path, f"no annoy tree roots found ({len(roots)} trailing nodes claim {n_items} items of {len(nodes)} nodes)"
        )
    return roots, n_items


def links_in_range(path: Any, ids: np.ndarray, n: int) -> np.ndarray:
    """The ids of one -1 padded neighbour list, refused if any is not a node (the numpy
    search reference's counterpart of the kernel's bounds check)."""
    if ids.size and (ids.min() < -1 or ids.max() >= n):
        _fail(path, f"an HNSW neighbour list holds node id {int(ids[(ids < -1) | (ids >= n)][0])} (valid: -1..{n - 1})")
    return ids[ids >= 0]


def leaf_items_in_range(path: Any, ids: np.ndarray, n_items: int) -> np.ndarray:
    """Candidate item ids from leaf buckets, refused if any is not an item (the Python
    traversal's counterpart of the kernel's bounds check)."""
    if ids.size and (ids.min() < 0 or ids.max() >= n_items):
        bad = int(ids[(ids < 0) | (ids >= n_items)][0])
        _fail(path, f"an annoy leaf bucket holds item id {bad} (valid: 0..{n_items - 1})")
    return ids
