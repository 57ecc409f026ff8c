"""How our HNSW build grows: build time over several sizes with the fitted exponent
(`--scaling`), and an update of 10 % new rows against a full rebuild (`--update`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.bench_data import exact_top10, synthetic_vectors
from embedpipe.indexes.bench_graph import GraphBench, child_build
from embedpipe.indexes.recall import recall_vs_exact
from embedpipe.indexes.registry import build_index


def build_scaling(
    sizes: tuple[int, ...],
    dim: int,
    impls: tuple[str, ...],
    g: GraphBench,
    report: Callable[[str], None] = lambda s: None,
    on_build: Callable[[dict[str, Any]], None] = lambda fits: None,
) -> dict[str, Any]:
    """Build time of each impl at each size (synthetic vectors) and the fitted exponent b of
    time ∝ n^b, over wall and over CPU time, next to the b a pure n log n curve gives over the
    same sizes (1.08 from 100 k to 1 M). `on_build` gets the figures so far after every build
    (sizes measured so far; an exponent once two are)."""
    times: dict[str, list[dict[str, float]]] = {i: [] for i in impls}
    with tempfile.TemporaryDirectory(prefix="embedpipe-scaling-") as tmp:
        for n in sizes:
            npy = Path(tmp) / f"x{n}.npy"
            np.save(npy, synthetic_vectors(n, dim, seed=5))
            for impl in impls:
                t = child_build(impl, npy, Path(tmp) / f"{impl}-{n}", g)
                times[impl].append(t)
                report(f"scaling {impl} n={n}: build {t['build_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU")
                on_build(_fits(sizes, times))
            npy.unlink()
    return _fits(sizes, times)


def _fits(sizes: tuple[int, ...], times: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for impl, ts in times.items():
        done = list(sizes[: len(ts)])
        wall, cpu = [t["build_s"] for t in ts], [t["cpu_s"] for t in ts]
        out[impl] = {
            "sizes": done,
            "build_s": [round(t, 2) for t in wall],
            "cpu_s": [round(t, 2) for t in cpu],
            "peak_rss_mb": [round(t["peak_rss_kb"] / 1024, 1) for t in ts],
            "exponent": fit_exponent(done, wall),
            "exponent_cpu": fit_exponent(done, cpu),
            "exponent_n_log_n": fit_exponent(done, [n * np.log(n) for n in done]),
        }
    return out


def fit_exponent(sizes: tuple[int, ...] | list[int], times: list[float]) -> float | None:
    """b of the least-squares fit time ∝ n^b in log-log (None for a single size)."""
    if len(sizes) < 2:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(times), 1)[0]), 3)


def update_bench(
    n: int, dim: int, g: GraphBench, fraction: float = 0.1, queries: int = 2000, ef: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Our HNSW: a full build of n rows vs a build of (1 − fraction)·n plus `add` of the rest:
    update wall and CPU time (all threads of this process) as a share of the full build's, and
    recall@10 of both at the same ef_search."""
    import os

    os.environ["EMBEDPIPE_THREADS"] = str(g.threads)
    x = synthetic_vectors(n + queries, dim, seed=seed)
    base, q = x[:n], x[n:]
    truth = exact_top10(base, q)
    full_s, full_cpu, full = _clocked(lambda: build_index(base, kind="hnsw", m=g.m, ef_construction=g.efc))
    cut = int(n * (1 - fraction))
    part = build_index(base[:cut], kind="hnsw", m=g.m, ef_construction=g.efc)
    update_s, update_cpu, _ = _clocked(lambda: part.add(base[cut:]))

    def rec(ix: Any) -> float:
        return recall_vs_exact(ix.search_rows(q, 10, ef_search=ef)[1], truth)

    return {
        "n": n,
        "new_rows": n - cut,
        "full_build_s": round(full_s, 4),
        "update_s": round(update_s, 4),
        "update_share": _share(update_s, full_s),
        "full_build_cpu_s": round(full_cpu, 4),
        "update_cpu_s": round(update_cpu, 4),
        "update_cpu_share": _share(update_cpu, full_cpu),
        "ef_search": ef,
        "recall_full": round(rec(full), 4),
        "recall_updated": round(rec(part), 4),
    }


def _share(part: float, whole: float) -> float | None:
    """part / whole, None when the whole was below the clock's resolution."""
    return round(part / whole, 3) if whole > 0 else None


def _clocked(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process's threads, result) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out
