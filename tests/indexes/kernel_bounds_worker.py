"""Subprocess side of `test_kernel_bounds`: corrupt graphs and trees searched with the load-time
validator switched off, so only the search kernels' own bounds checks stand between a bad value
and a memory error.

``python -m tests.indexes.kernel_bounds_worker KIND QUANT TMPDIR`` prints one JSON line per
case: ``{"case": …, "outcome": "IndexFileError" | "no error" | "<other exception>", "message": …}``.
A crash kills the process, which the test reports as a failure.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes import validate
from embedpipe.indexes.annoy import AnnoyIndex
from embedpipe.indexes.format import IndexFileError, read_container, write_container
from embedpipe.indexes.registry import build_index, load_index
from tests.indexes.helpers import clustered

N, DIM = 400, 32
BIG = 2**31 - 1


def _rewrite(path: Path, edit: Callable[[dict, dict], None]) -> None:
    """Edit the sections of a container and write it back with fresh checksums."""
    header, sec = read_container(path)
    sec = {k: np.array(v) for k, v in sec.items()}
    edit(header, sec)
    write_container(path, {k: v for k, v in header.items() if not k.startswith("payload")}, sec)


def _set(name: str, where: Any, value: int) -> Callable[[dict, dict], None]:
    def edit(h: dict, s: dict) -> None:
        s[name][where(h, s) if callable(where) else where] = value

    return edit


def _entry(h: dict, s: dict) -> int:
    return h["params"]["entry"]


class _Loaded:
    """An edit of the loaded index object (values the header schema already refuses in a file)."""

    def __init__(self, attr: str, value: int) -> None:
        self.attr, self.value = attr, value


HNSW_CASES: dict[str, Callable[[dict, dict], None] | _Loaded] = {
    "layer-0 neighbour id n": _set("nbr0", (slice(None), 0), N),
    "layer-0 neighbour id 2^31-1": _set("nbr0", (slice(None), 1), BIG),
    "upper-layer neighbour id n": _set("nbru", (slice(None), 0), N + 3),
    "upper-layer row 2^40 at the entry": _set("upoff", _entry, 2**40),
    "upper-layer rows negative": _set("upoff", slice(None), -5),
    "top level 127": _set("level", _entry, 127),
    "entry point -1": _Loaded("entry", -1),
    "entry point n": _Loaded("entry", N),
    "entry point 2^40": _Loaded("entry", 2**40),
}


def _annoy_edit(kind: str, value: int | None) -> Callable[[np.ndarray, int, int], None]:
    """An edit of the node array: every split child (None: the node count), every leaf's
    first item, or every leaf's kind."""

    def edit(nodes: np.ndarray, n_items: int, K: int) -> None:
        nd = nodes[:, 0]
        tree = np.arange(len(nodes)) >= n_items
        split = np.flatnonzero(tree & (nd > K))
        leaf = np.flatnonzero(tree & (nd > 1) & (nd <= K))
        if kind == "child":
            nodes[split, 1] = value if value is not None else len(nodes)
        elif kind == "self-loop":
            nodes[split, 1] = split
            nodes[split, 2] = split
        elif kind == "item":
            nodes[leaf, 1] = value
        elif kind == "kind":
            nodes[leaf, 0] = value

    return edit


ANNOY_CASES = {
    "split child 2^31-1": _annoy_edit("child", BIG),
    "split child -2^31": _annoy_edit("child", -(2**31)),
    "split child n_nodes": _annoy_edit("child", None),
    "split nodes that are their own children": _annoy_edit("self-loop", 0),
    "leaf item -1": _annoy_edit("item", -1),
    "leaf item n_items": _annoy_edit("item", N),
    "leaf with 0 descendants": _annoy_edit("kind", 0),
    "leaf with -5 descendants": _annoy_edit("kind", -5),
}


def _outcome(case: str, search: Callable[[], Any]) -> dict[str, str]:
    try:
        search()
    except IndexFileError as exc:
        return {"case": case, "outcome": "IndexFileError", "message": str(exc)}
    except Exception as exc:  # reported, and the test fails on it
        return {"case": case, "outcome": type(exc).__name__, "message": str(exc)[:300]}
    return {"case": case, "outcome": "no error", "message": ""}


def _queries(x: np.ndarray) -> list[np.ndarray]:
    """A single query and a batch large enough to run on several workers."""
    return [x[:1], x[:16]]


def run_hnsw(quant: str, tmp: Path) -> list[dict[str, str]]:
    x = clustered(N, DIM, seed=9)
    pristine = tmp / "pristine.idx"
    build_index(x, kind="hnsw", quant=quant, m=6, ef_construction=30).save(pristine)
    header, sec = read_container(pristine)
    assert sec["level"][header["params"]["entry"]] >= 1, "the fixture needs upper layers"
    out = []
    for case, edit in HNSW_CASES.items():
        path = tmp / "case.idx"
        shutil.copy(pristine, path)
        if isinstance(edit, _Loaded):
            ix = load_index(path)
            setattr(ix, edit.attr, edit.value)
        else:
            _rewrite(path, edit)
            ix = load_index(path)
        out.append(_outcome(case, lambda ix=ix: [ix.search_rows(q, 10, ef_search=32) for q in _queries(x)]))
    return out


def run_annoy(tmp: Path) -> list[dict[str, str]]:
    x = clustered(N, DIM, seed=9)
    ix = build_index(x, kind="annoy", n_trees=4)
    out = []
    for case, edit in ANNOY_CASES.items():
        nodes = np.array(ix.nodes)
        edit(nodes, ix.n_items, ix.K)
        path = tmp / "case.ann"
        nodes.tofile(path)
        loaded = AnnoyIndex.load_spotify(path, DIM)
        out.append(_outcome(case, lambda a=loaded: [a.search_rows(q, 10, search_k=10**6) for q in _queries(x)]))
    return out


def main(kind: str, quant: str, tmp: str) -> None:
    for name in validate.CHECKS:  # what is tested here is what happens without them
        validate.CHECKS[name] = lambda path, index: None
    results = run_annoy(Path(tmp)) if kind == "annoy" else run_hnsw(quant, Path(tmp))
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
