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
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.indexes.base import truncate_normalize
from embedpipe.indexes.bench_data import exact_top10, load_vectors
from embedpipe.indexes.bench_flat import annoy_rows, flat_rows
from embedpipe.indexes.bench_graph import GraphBench, graph_rows
from embedpipe.indexes.bench_measure import BATCH_QUERIES, Row
from embedpipe.indexes.bench_summary import ratios, size_summary
from embedpipe.indexes.format import MAX_DIM
from embedpipe.indexes.params import file_bounds
from embedpipe.output_files import check_output_file

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


OURS = ("fp32", "int8")


def check_references(names: Iterable[str]) -> tuple[str, ...]:
    """`names` if each is a reference this benchmark knows (`REFERENCES`): a mistyped one is an
    error naming the choices, before any work."""
    names = tuple(names)
    unknown = [name for name in names if name not in REFERENCES]
    if unknown:
        raise EmbedpipeError(f"unknown reference(s) {', '.join(unknown)}; choose from {', '.join(REFERENCES)}")
    return names


def check_graph(graph: GraphBench, dim: int) -> None:
    """The shared graph settings and the dimension, within what our index files can hold (the
    same M and ef_construction go to every implementation)."""
    if not 1 <= dim <= MAX_DIM:
        raise ArgumentError("dim", f"must be in 1..{MAX_DIM}, got {dim}")
    for name, value in (("m", graph.m), ("ef_construction", graph.efc)):
        bounds = file_bounds("hnsw", name)
        lo, hi = bounds["minimum"], bounds["maximum"]
        if not lo <= value <= hi:
            raise ArgumentError(name, f"must be in {lo}..{hi}, got {value}")
    if graph.threads < 1:
        raise ArgumentError("threads", f"must be >= 1, got {graph.threads}")


def check_index_args(
    n: int,
    dim: int,
    queries: int,
    n_single: int,
    repeats: int,
    references: Iterable[str],
    graph: GraphBench,
    budget_s: float | None = None,
    ours: Iterable[str] = OURS,
) -> None:
    """Every argument of `run_index_bench` that can be checked without reading the vectors, so
    a mistake is reported before the first build rather than as a traceback (or as meaningless
    figures) after it."""
    check_references(references)
    bad = [quant for quant in ours if quant not in OURS]
    if bad:
        raise ArgumentError("ours", f"takes fp32 and/or int8, not {', '.join(bad)}")
    for name, value, low in (("n", n, 2), ("queries", queries, 1), ("n_single", n_single, 1), ("repeats", repeats, 1)):
        if value < low:
            raise ArgumentError(name, f"must be >= {low}, got {value}")
    check_graph(graph, dim)
    if budget_s is not None and not budget_s >= 0:  # 0: no build starts (each is listed as skipped)
        raise ArgumentError("budget_s", f"must be >= 0 seconds, got {budget_s}")


def check_out(out: Path | str | None, vectors: str | None = None) -> Path | None:
    """Where the JSON summary goes, once it is known it can be written there (a .json file in
    an existing directory, not the input vectors), so a bad path fails before any build."""
    if out is None:
        return None
    return check_output_file(out, (".json",), () if vectors is None else (vectors,))


def check_scaling(sizes: Iterable[int]) -> tuple[int, ...]:
    """The `--scaling` sizes: each builds an index of that many vectors."""
    sizes = tuple(sizes)
    small = [size for size in sizes if size < 2]
    if small:
        raise ArgumentError("scaling", f"sizes must be >= 2, got {', '.join(map(str, small))}")
    return sizes


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
    g = graph or GraphBench()
    check_index_args(n, dim, queries, n_single, repeats, references, g, budget_s, ours)
    out = check_out(out, vectors)
    budget = Budget(budget_s)
    x, label = load_vectors(vectors, n + queries, dim)
    if len(x) - queries < 2:
        raise ArgumentError(
            "queries", f"({queries}) leaves {max(0, len(x) - queries)} of the {len(x)} vectors to index; 2 are needed"
        )
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

    check_graph(graph, dim)
    check_scaling(scaling)
    if update and n < 2:
        raise ArgumentError("n", f"must be >= 2, got {n}")
    out = check_out(out)

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
