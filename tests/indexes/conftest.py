"""`implementations`: every fast search path of the index types next to its reference twin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from embedpipe.indexes import VectorIndex, build_index
from embedpipe.indexes.quant import dequantize

from .helpers import clustered

D = 64  # a multiple of 32: the int8 GEMM path needs whole Q8 blocks
Result = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Twin:
    """A fast path and the reference it must agree with, on one index. `floor` None: the same
    top-k up to ties; a number: an approximate search whose reference may take another path
    through tied candidates, held to that recall of the reference's top-k."""

    name: str
    build: Callable[[], VectorIndex]
    fast: Callable[[VectorIndex, np.ndarray, int], Result]
    reference: Callable[[VectorIndex, np.ndarray, int], Result]
    floor: float | None = None
    ready: Callable[[VectorIndex], bool] = lambda ix: True  # the fast path is really taken


def _dense_reference(ix: VectorIndex, q: np.ndarray, k: int) -> Result:
    """Scores of the dequantized stored vectors, stable top-k: the oracle of every brute path."""
    s = q @ dequantize(ix.codes, ix.scale, ix.scale_mode, ix.offset).T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, axis=1).astype(np.float32), rows


def _one_at_a_time(ix: VectorIndex, q: np.ndarray, k: int) -> Result:
    """Single queries: brute's JIT row-dot scan."""
    parts = [ix.search_rows(qi, k) for qi in q]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _batched(use_jit: bool) -> Callable[[VectorIndex, np.ndarray, int], Result]:
    def run(ix: VectorIndex, q: np.ndarray, k: int) -> Result:
        ix.use_jit = use_jit
        return ix.search_rows(q, k)

    return run


def _annoy(use_jit: bool) -> Callable[[VectorIndex, np.ndarray, int], Result]:
    def run(ix: VectorIndex, q: np.ndarray, k: int) -> Result:
        ix.use_jit = use_jit
        return ix.search_rows(q, k, search_k=400)

    return run


def _brute(quant: str, mode: str) -> Callable[[], VectorIndex]:
    return lambda: build_index(clustered(900, D, seed=12), kind="brute", quant=quant, scale_mode=mode)


TWINS: list[Twin] = [
    *(
        Twin(f"brute-{quant}-{mode}-scan", _brute(quant, mode), _one_at_a_time, _dense_reference)
        for quant in ("fp32", "int16", "int8")
        for mode in ("dim", "vector")
    ),
    *(
        Twin(
            f"brute-int8-{mode}-q8-gemm",
            _brute("int8", mode),
            _batched(True),
            _dense_reference,
            ready=lambda ix: ix._q8_matmul() is not None,
        )
        for mode in ("dim", "vector")
    ),
    *(
        Twin(f"brute-{quant}-blas-blocks", _brute(quant, "dim"), _batched(False), _dense_reference)
        for quant in ("fp32", "int8")
    ),
    Twin(
        "annoy-traversal-kernel",
        lambda: build_index(clustered(900, D, seed=12), kind="annoy", n_trees=6),
        _annoy(True),
        _annoy(False),
    ),
    *(
        Twin(
            f"hnsw-{quant}-{mode}-search-kernel",
            lambda quant=quant, mode=mode: build_index(
                clustered(1500, D, seed=1), kind="hnsw", quant=quant, m=8, ef_construction=60, scale_mode=mode
            ),
            lambda ix, q, k: ix.search_rows(q, k, ef_search=40),
            lambda ix, q, k: ix.search_reference(q, k, 40),
            floor=0.97,
        )
        for quant, mode in (("fp32", "dim"), ("int8", "dim"), ("int8", "vector"))
    ),
]


@pytest.fixture(params=TWINS, ids=lambda t: t.name)
def implementations(request) -> Twin:
    return request.param
