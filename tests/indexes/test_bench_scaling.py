"""`bench index --scaling`: the exponent fit and the per-size child builds (no timing asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes.bench_graph import GraphBench
from embedpipe.indexes.bench_scaling import build_scaling, fit_exponent


def test_fit_exponent_recovers_a_power_law_and_n_log_n():
    sizes = [100_000, 200_000, 1_000_000]
    assert fit_exponent(sizes, [3.0 * n**1.25 for n in sizes]) == pytest.approx(1.25, abs=1e-3)
    assert fit_exponent([100_000, 1_000_000], [n * np.log(n) for n in (100_000, 1_000_000)]) == pytest.approx(1.079)
    assert fit_exponent([5000], [1.0]) is None


def test_build_scaling_times_each_size_in_a_child_and_fits():
    lines: list[str] = []
    got = build_scaling((150, 300), 16, ("embedpipe-hnsw-fp32",), GraphBench(m=4, efc=16, threads=1), lines.append)
    fit = got["embedpipe-hnsw-fp32"]
    assert fit["sizes"] == [150, 300] and len(fit["cpu_s"]) == 2 and all(r > 0 for r in fit["peak_rss_mb"])
    assert fit["exponent_n_log_n"] > 1.0 and fit["exponent_cpu"] is not None
    assert [line.split(":")[0] for line in lines] == [
        "scaling embedpipe-hnsw-fp32 n=150",
        "scaling embedpipe-hnsw-fp32 n=300",
    ]


def test_update_bench_reports_wall_and_cpu_shares_and_both_recalls():
    from embedpipe.indexes.bench_scaling import update_bench

    got = update_bench(400, 16, GraphBench(m=4, efc=16, threads=1), queries=20)
    assert got["new_rows"] == 40 and got["full_build_cpu_s"] > 0 and got["update_cpu_s"] >= 0
    assert 0 <= got["update_cpu_share"] < 1  # 40 rows added cost less than building all 400
    assert 0.0 <= got["recall_updated"] <= 1.0 and got["recall_full"] > 0.5
