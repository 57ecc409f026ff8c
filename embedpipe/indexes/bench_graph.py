"""The graph indexes of `embedpipe bench index` — our HNSW fp32/int8, hnswlib, usearch, FAISS
IndexHNSWFlat and IndexFlatIP — each built in a fresh child process (`bench_build`) at the
same M, ef_construction and thread count, so its peak RSS is its own, then searched over
ef_search in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.bench_measure import SWEEP_EF, Row, file_size, measure
from embedpipe.indexes.registry import load_index


@dataclass
class GraphBench:
    """Shared settings of the graph indexes (ours and the references): same M,
    ef_construction and thread count for everyone."""

    m: int = 16
    efc: int = 200
    threads: int = 2
    ef_sweep: tuple[int, ...] = SWEEP_EF


IMPORTS = {"hnswlib": "hnswlib", "usearch": "usearch", "faiss-flat": "faiss", "faiss-hnsw": "faiss", "annoy": "annoy"}


def child_build(
    impl: str, npy: Path, out: Path, g: GraphBench, seed: int = 0, timeout: float | None = None
) -> dict[str, Any]:
    """Build with `impl` in a fresh process (see `bench_build`); its timing and RSS. The child's
    stderr (our progress bar, errors) goes to ours; past `timeout` seconds it is killed
    (`subprocess.TimeoutExpired`)."""
    import importlib.util

    if impl in IMPORTS and importlib.util.find_spec(IMPORTS[impl]) is None:
        raise ImportError(f"no module named {IMPORTS[impl]!r}")
    params = json.dumps({"m": g.m, "efc": g.efc, "threads": g.threads, "seed": seed, "progress": True})
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.indexes.bench_build", impl, str(npy), str(out), params],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, "TQDM_MININTERVAL": "30"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} build failed (exit {proc.returncode}; its messages are above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def searchers(
    impl: str, path: Path, n: int, d: int, threads: int
) -> tuple[Callable[[int], None], Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]:
    """(set_ef, single(v) -> ids, batch(q) -> ids) for a saved graph index."""
    if impl.startswith("embedpipe"):
        ix = load_index(path)
        state = {"ef": 64}
        return (
            lambda ef: state.update(ef=ef),
            lambda v: ix.search_rows(v, 10, ef_search=state["ef"])[1],
            lambda qq: ix.search_rows(qq, 10, ef_search=state["ef"])[1],
        )
    if impl == "hnswlib":
        import hnswlib

        h = hnswlib.Index(space="ip", dim=d)
        h.load_index(str(path), max_elements=n)
        return (
            lambda ef: h.set_ef(max(ef, 10)),
            lambda v: h.knn_query(v[None, :], 10, num_threads=1)[0],
            lambda qq: h.knn_query(qq, 10, num_threads=threads)[0],
        )
    if impl == "usearch":
        from usearch.index import Index

        u = Index.restore(str(path))

        def set_ef(ef: int) -> None:
            u.expansion_search = ef

        return (set_ef, lambda v: u.search(v, 10, threads=1).keys, lambda qq: u.search(qq, 10, threads=threads).keys)
    import faiss

    f = faiss.read_index(str(path))
    faiss.omp_set_num_threads(threads)

    def set_ef_faiss(ef: int) -> None:
        if hasattr(f, "hnsw"):
            f.hnsw.efSearch = ef

    return (set_ef_faiss, lambda v: f.search(v[None, :], 10)[1], lambda qq: f.search(qq, 10)[1])


GRAPH_IMPLS: dict[str, str] = {  # impl -> label
    "embedpipe-hnsw-fp32": "hnsw fp32",
    "embedpipe-hnsw-int8": "hnsw int8",
    "hnswlib": "hnswlib fp32",
    "usearch": "usearch f32",
    "faiss-hnsw": "IndexHNSWFlat fp32",
    "faiss-flat": "IndexFlatIP fp32",
}


def graph_rows(
    impl: str,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    tmp: Path,
    repeats: int,
    n_single: int,
    report: Callable[[Row], None],
    g: GraphBench,
    timeout: float | None = None,
) -> list[Row]:
    npy = tmp / "base.npy"
    if not npy.exists():
        np.save(npy, x)
    out = tmp / f"{impl}.idx"
    built = child_build(impl, npy, out, g, timeout=timeout)
    set_ef, single, batch = searchers(impl, out, len(x), x.shape[1], g.threads)
    owner = impl.split("-")[0]
    label = GRAPH_IMPLS[impl] + ("" if impl == "faiss-flat" else f" M={g.m} efc={g.efc}")
    rows = []
    for ef in (0,) if impl == "faiss-flat" else g.ef_sweep:
        if ef:
            set_ef(ef)
        row = measure(
            Row(owner, label, f"ef={ef}" if ef else "", built["build_s"], file_size(out)),
            single,
            batch,
            q,
            n_single,
            truth,
            repeats,
        )
        row.extra = {
            "peak_rss_mb": round(built["peak_rss_kb"] / 1024, 1),
            "build_rss_mb": round((built["peak_rss_kb"] - built["rss_before_kb"]) / 1024, 1),
            "build_cpu_s": round(built["cpu_s"], 2),
            "threads": g.threads,
        }
        rows.append(row)
        report(row)
    return rows
