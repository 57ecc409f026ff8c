"""`bench index` plumbing: the wall budget and the summary written as it goes (figures are not
asserted anywhere; they belong in the benchmark's output)."""

from __future__ import annotations

import json

import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.bench import run_index_bench


def test_a_spent_budget_starts_no_build_and_says_why(tmp_path):
    out = tmp_path / "summary.json"
    s = run_index_bench(300, 16, queries=20, references=("hnswlib",), ours_flat=False, budget_s=0, out=out)
    assert s["rows"] == [] and s["complete"]
    assert set(s["skipped"]) == {"hnswlib", "embedpipe-hnsw-fp32", "embedpipe-hnsw-int8"}
    assert all("wall budget" in why for why in s["skipped"].values())
    assert json.loads(out.read_text())["skipped"] == s["skipped"]


@pytest.mark.slow
def test_each_build_is_written_to_the_summary_file_with_its_ratios(tmp_path):
    pytest.importorskip("hnswlib")
    out = tmp_path / "summary.json"
    notes: list[str] = []
    s = run_index_bench(
        400, 16, queries=20, n_single=5, repeats=1, references=("hnswlib",), ours_flat=False, out=out, note=notes.append
    )
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] and len(on_disk["rows"]) == len(s["rows"]) == 3 * 8  # 3 builds x 8 ef_search
    first = [r for r in on_disk["rows"] if r["config"].startswith("hnswlib")][0]
    assert first["extra"]["peak_rss_mb"] > 0 and first["extra"]["build_cpu_s"] >= 0
    vs = next(e for e in s["ratios"] if e["comparison"].startswith("hnsw fp32 vs hnswlib"))
    assert {"build_time_ratio", "build_cpu_ratio", "peak_rss_ratio", "size_ratio"} <= set(vs)
    assert s["int8_size"]["fp32_over_int8"] > 1.1  # at 16-d the graph outweighs the vectors
    assert any("hnswlib: done" in n for n in notes)


def test_ours_picks_our_element_types_and_refuses_others():
    s = run_index_bench(300, 16, queries=20, references=(), ours_flat=False, budget_s=0, ours=("int8",))
    assert set(s["skipped"]) == {"embedpipe-hnsw-int8"}
    with pytest.raises(EmbedpipeError, match="fp32 and/or int8"):
        run_index_bench(300, 16, queries=20, references=(), ours=("int4",))


def test_scaling_figures_are_written_after_every_build_and_at_the_end(tmp_path):
    from embedpipe.indexes.bench import run_growth_bench
    from embedpipe.indexes.bench_graph import GraphBench

    out = tmp_path / "scaling.json"
    seen: list[dict] = []

    def report(line: str) -> None:  # called as each build finishes, before its figures are saved
        seen.append(json.loads(out.read_text()) if out.exists() else {})

    s = run_growth_bench(
        {"data": "", "n": 0},
        0,
        16,
        GraphBench(m=4, efc=16, threads=1),
        scaling=(150, 300),
        scaling_impls=("embedpipe-hnsw-fp32",),
        report=report,
        out=out,
    )
    assert seen[0] == {} and seen[1]["scaling"]["embedpipe-hnsw-fp32"]["sizes"] == [150]
    assert not seen[1]["complete"] and seen[1]["scaling"]["embedpipe-hnsw-fp32"]["exponent"] is None
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] and on_disk["scaling"] == s["scaling"]
    assert on_disk["scaling"]["embedpipe-hnsw-fp32"]["sizes"] == [150, 300]
