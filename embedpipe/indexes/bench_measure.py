"""One row of `embedpipe bench index` and how it is measured: QPS of single queries (one call
each) and of one batched call (medians of repeats), recall@10 against the exact top-10."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.recall import recall_vs_exact

SWEEP_SEARCH_K = (100, 200, 500, 1000, 2000, 4000, 8000)


SWEEP_EF = (16, 32, 48, 64, 96, 128, 192, 256)
# Batched QPS is timed on this many of the held-out queries; recall@10 is measured on all of
# them, since at low ef a few hundred queries cannot tell two graphs apart (see `measure`).
BATCH_QUERIES = 500


@dataclass
class Row:
    impl: str
    config: str
    knob: str = ""
    build_s: float = 0.0
    size_bytes: int = 0
    qps_single: float = 0.0
    qps_batch: float = 0.0
    recall_at_10: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def measure(
    row: Row,
    single: Callable[[np.ndarray], Any],
    batch: Callable[[np.ndarray], Any],
    q: np.ndarray,
    n_single: int,
    truth: np.ndarray,
    repeats: int,
) -> Row:
    """QPS of `n_single` one-query calls and of one batched call over `BATCH_QUERIES` queries
    (medians of `repeats`); recall@10 over every query in `q`, in one more untimed call when
    there are more. At ef_search 16 a graph loses about one query in eight outright (recall 0,
    the descent ends in the wrong cluster), and which ones differs from graph to graph, so on
    500 queries two graphs of equal quality differ by up to ~5 points."""
    qs = q[:n_single]
    single(qs[0])  # warm-up (JIT compile, page-in)
    t_single, _ = timed(lambda: [single(v) for v in qs], repeats)
    qb = q[:BATCH_QUERIES]
    t_batch, found = timed(lambda: batch(qb), repeats)
    if len(qb) < len(q):
        found = batch(q)
    row.qps_single = len(qs) / t_single
    row.qps_batch = len(qb) / t_batch
    row.recall_at_10 = recall_vs_exact(found, truth)
    return row


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def format_row(r: Row) -> str:
    rss = f"  peak RSS {r.extra['peak_rss_mb']:7.0f}MB" if "peak_rss_mb" in r.extra else ""
    return (
        f"{r.impl:10s} {r.config:34s} {r.knob:8s} build {r.build_s:7.2f}s "
        f"size {r.size_bytes / 1e6:7.1f}MB  single {r.qps_single:8.0f} q/s  "
        f"batch {r.qps_batch:8.0f} q/s  recall@10 {r.recall_at_10:.4f}{rss}"
    )
