"""`embedpipe bench index`: our index configurations next to FAISS, usearch, annoy and hnswlib.

Same vectors and queries for everyone (`bench_data`); build time, on-disk size, QPS for single
queries (one call per query) and batched (one call for 500), recall@10 against exact fp32
search at the same dim (`bench_measure`). Graph indexes — our HNSW fp32/int8, hnswlib, usearch,
FAISS IndexHNSWFlat (and IndexFlatIP) — are built in a fresh child process each, at the same M,
ef_construction and thread count, so each build's peak RSS is its own (`bench_graph`); our
brute/annoy and Spotify annoy are built here (`bench_flat`). Approximate indexes are swept over
their query knob (annoy search_k, HNSW ef) so they can be compared at equal recall; the ratio
rows pick, for each implementation, the fastest point that reaches the target recall
(`bench_summary`). Build-time scaling and the update timing are in `bench_scaling`, run by
`run_growth_bench`.

This module runs the steps in order under a wall budget and writes the summary as it goes.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ArgumentError
from embedpipe.indexes.base import truncate_normalize
from embedpipe.indexes.bench_data import exact_top10, load_vectors
from embedpipe.indexes.bench_flat import annoy_rows, flat_rows
from embedpipe.indexes.bench_graph import GraphBench, graph_rows
from embedpipe.indexes.bench_measure import BATCH_QUERIES, Row
from embedpipe.indexes.bench_summary import ratios, size_summary

# --ref name -> the graph implementations it stands for (annoy is built in this process)
REFERENCES: dict[str, tuple[str, ...]] = {
    "hnswlib": ("hnswlib",),
    "usearch": ("usearch",),
    "faiss": ("faiss-flat", "faiss-hnsw"),
    "annoy": ("annoy",),
}


# the order graph builds run in: the ratios' reference and ours first, so a run cut short by
# its wall budget still has them
ORDER = ("hnswlib", "embedpipe-hnsw-fp32", "faiss-flat", "embedpipe-hnsw-int8", "usearch", "faiss-hnsw", "annoy")


class Budget:
    """The wall-clock budget of a bench run: a step starts only while some is left, and a
    child build is killed when it runs out."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def run_index_bench(
    n: int = 200_000,
    dim: int = 768,
    vectors: str | None = None,
    queries: int = 2000,
    n_single: int = 200,
    repeats: int = 3,
    references: tuple[str, ...] = tuple(REFERENCES),
    report: Callable[[Row], None] = lambda r: None,
    graph: GraphBench | None = None,
    ours_flat: bool = True,
    budget_s: float | None = None,
    out: Path | None = None,
    note: Callable[[str], None] = lambda s: None,
    ours: tuple[str, ...] = ("fp32", "int8"),
) -> dict[str, Any]:
    """Run everything; returns {"data", "rows", "ratios", "skipped", …}. Graph indexes (ours and
    the references) are built in child processes at the same M / ef_construction / threads, in
    `ORDER`; `ours` picks our HNSW element types. With `budget_s`, no step starts after that many
    seconds and a build still running then is killed (both listed under "skipped"); with `out`, the summary so far is rewritten
    there after every step, so a run cut short still leaves its results."""
    bad = [quant for quant in ours if f"embedpipe-hnsw-{quant}" not in ORDER]
    if bad:
        raise ArgumentError("ours", f"takes fp32 and/or int8, not {', '.join(bad)}")
    g = graph or GraphBench()
    budget = Budget(budget_s)
    x, label = load_vectors(vectors, n + queries, dim)
    if x.shape[1] > dim:
        x = truncate_normalize(x, dim)
        label += f", truncated to {dim}"
    base, q = np.ascontiguousarray(x[:-queries]), np.ascontiguousarray(x[-queries:])
    del x
    truth = exact_top10(base, q)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    wanted = {impl for name in references for impl in REFERENCES[name]}
    wanted |= {f"embedpipe-hnsw-{quant}" for quant in ours}
    steps = [i for i in ORDER if i in wanted]

    def summary(done: bool) -> dict[str, Any]:
        return {
            "data": label,
            "n": len(base),
            "queries": len(q),
            "batch_queries": min(len(q), BATCH_QUERIES),
            "dim": base.shape[1],
            "threads": g.threads,
            "m": g.m,
            "ef_construction": g.efc,
            "complete": done,
            "elapsed_s": round(budget.elapsed(), 1),
            "rows": [asdict(r) for r in rows],
            "ratios": ratios(rows),
            "int8_size": size_summary(rows),
            "skipped": skipped,
        }

    with tempfile.TemporaryDirectory(prefix="embedpipe-bench-") as tmp:
        for impl in steps + (["embedpipe-flat"] if ours_flat else []):
            if budget.spent():
                skipped[impl] = f"not started: the {budget.seconds:.0f} s wall budget was spent"
                continue
            note(f"[{budget.elapsed():7.0f} s] {impl}: building {len(base)} x {base.shape[1]}")
            t0 = time.perf_counter()
            try:
                if impl == "embedpipe-flat":
                    got = flat_rows(base, q, truth, Path(tmp), repeats, n_single, report)
                elif impl == "annoy":
                    got = annoy_rows(base, q, truth, Path(tmp), repeats, n_single, report)
                else:
                    got = graph_rows(impl, base, q, truth, Path(tmp), repeats, n_single, report, g, budget.left())
                rows += got
                note(f"[{budget.elapsed():7.0f} s] {impl}: done in {time.perf_counter() - t0:.0f} s")
            except ImportError as exc:
                skipped[impl] = f"not installed ({exc}); pip install embedpipe[bench]"
            except subprocess.TimeoutExpired:
                skipped[impl] = f"build killed when the {budget.seconds:.0f} s wall budget ran out"
            except RuntimeError as exc:
                skipped[impl] = str(exc)
            if impl in skipped:
                note(f"[{budget.elapsed():7.0f} s] {impl}: skipped: {skipped[impl]}")
            if out is not None:
                _write_json(out, summary(False))
    result = summary(True)
    if out is not None:
        _write_json(out, result)
    return result


SCALING_IMPLS = ("embedpipe-hnsw-fp32", "hnswlib")


def run_growth_bench(
    summary: dict[str, Any],
    n: int,
    dim: int,
    graph: GraphBench,
    update: bool = False,
    scaling: tuple[int, ...] = (),
    scaling_impls: tuple[str, ...] = SCALING_IMPLS,
    report: Callable[[str], None] = lambda s: None,
    out: Path | None = None,
) -> dict[str, Any]:
    """The `--update` and `--scaling` steps (`bench_scaling`) after (or, with `--scaling-only`,
    instead of) `run_index_bench`: their figures go into `summary` under "update" and
    "scaling", and with `out` the summary is rewritten there after the update and after every
    scaling build, as `run_index_bench` does after every step. Returns `summary`."""
    from embedpipe.indexes.bench_scaling import build_scaling, update_bench

    def save(done: bool) -> None:
        if out is not None:
            _write_json(out, dict(summary, complete=done))

    if update:
        summary["update"] = update_bench(n, dim, graph)
        save(not scaling)
    if scaling:

        def partial(fits: dict[str, Any]) -> None:
            summary["scaling"] = fits
            save(False)

        summary["scaling"] = build_scaling(scaling, dim, scaling_impls, graph, report, partial)
        save(True)
    summary["complete"] = True
    return summary
