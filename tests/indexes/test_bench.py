"""`bench index` plumbing: the wall budget and the summary written as it goes (figures are not
asserted anywhere; they belong in the benchmark's output)."""

from __future__ import annotations

import json

import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.bench import run_growth_bench, run_index_bench
from embedpipe.indexes.bench_graph import GraphBench


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


@pytest.fixture
def no_vectors(monkeypatch):
    """Fails the test if vectors are generated: the arguments are checked before any work."""

    def refuse(*_args, **_kw):
        raise AssertionError("vectors were generated")

    monkeypatch.setattr("embedpipe.indexes.bench_data.synthetic_vectors", refuse)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"references": ("bogus",)}, r"unknown reference\(s\) bogus; choose from hnswlib, usearch, faiss, annoy"),
        ({"references": ("none",)}, r"unknown reference\(s\) none"),
        ({"queries": 0}, "queries must be >= 1, got 0"),
        ({"dim": 0}, r"dim must be in 1\.\.65536, got 0"),
        ({"n_single": -5}, "n_single must be >= 1, got -5"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"budget_s": -60.0}, "budget_s must be >= 0 seconds"),
        ({"graph": GraphBench(m=0)}, r"m must be in 2\.\.4096, got 0"),
        ({"graph": GraphBench(efc=0)}, r"ef_construction must be in 1\.\."),
        ({"graph": GraphBench(threads=0)}, "threads must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_vector_is_made(kw, match, no_vectors):
    args = {"n": 100, "dim": 16, "queries": 10, "references": ("annoy",), **kw}
    with pytest.raises(EmbedpipeError, match=match):
        run_index_bench(**args)


@pytest.mark.parametrize("name, match", [("nodir/x.json", "no such directory"), ("x.txt", "use one of .json")])
def test_a_bad_out_path_is_refused_before_any_build(tmp_path, name, match, no_vectors):
    with pytest.raises(EmbedpipeError, match=match):
        run_index_bench(100, 16, queries=10, references=(), out=tmp_path / name)
    with pytest.raises(EmbedpipeError, match=match):
        run_growth_bench({}, 0, 16, GraphBench(), scaling=(150,), out=tmp_path / name)


def test_growth_bench_checks_its_sizes_and_graph_first(no_vectors):
    with pytest.raises(EmbedpipeError, match="scaling sizes must be >= 2, got 1"):
        run_growth_bench({}, 0, 16, GraphBench(), scaling=(1, 150))
    with pytest.raises(EmbedpipeError, match="m must be in"):
        run_growth_bench({}, 0, 16, GraphBench(m=1), scaling=(150,))


def test_queries_must_leave_vectors_to_index(tmp_path):
    """Real vectors with fewer rows than --queries + 2: an error, not an empty index."""
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32))
    with pytest.raises(EmbedpipeError, match=r"queries \(11\) leaves 1 of the 12 vectors to index"):
        run_index_bench(100, 16, vectors=str(tmp_path / "v.npy"), queries=11, references=("annoy",))
