"""`embedpipe bench runtime` on the tiny model: runs end to end, JSON schema, absent peers are
reported as skipped with a reason (not as errors or silent gaps)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.runtime.bench_texts import documents

RESULT_KEYS = {
    "peer",
    "threads",
    "kind",
    "single_ms",
    "batch_texts",
    "batch_s",
    "emb_per_s",
    "tok_per_s",
    "single_cpu_ms",
    "batch_cpu_s",
    "int8_peak_fraction",
    "fp32_peak_fraction",
    "floor_fraction",
    "load_rss_mb",
    "peak_rss_mb",
    "rss_anon_mb",
    "rss_file_mb",
    "rounds",
}


@pytest.fixture
def no_llama_cpp(monkeypatch, tmp_path):
    """Peers load in worker processes: a module first on their PYTHONPATH hides llama_cpp there."""
    hide = tmp_path / "hide_llama_cpp"
    hide.mkdir()
    (hide / "llama_cpp.py").write_text("raise ImportError(\"No module named 'llama_cpp' (hidden by the test)\")\n")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(hide) + (os.pathsep + path if path else ""))


def test_bench_runtime_json(tiny_gguf, no_llama_cpp, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "runtime",
            "--model",
            str(tiny_gguf),
            "--threads",
            "1,2",
            "--kind",
            "short",
            "--singles",
            "2",
            "--repeats",
            "1",
            "--batch-texts",
            "5",
            "--st-python",
            str(tmp_path / "no-python"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert {"machine", "model", "texts", "peaks", "ffn", "results", "ratios", "skipped", "agreement"} <= set(summary)
    assert summary["texts"]["short"]["count"] == 5
    assert {(r["peer"], r["threads"]) for r in summary["results"]} == {(p, t) for p in ("jit", "numpy") for t in (1, 2)}
    for r in summary["results"]:
        assert set(r) == RESULT_KEYS
        assert r["kind"] == "short" and r["batch_texts"] == 5
        assert r["single_ms"] > 0 and r["emb_per_s"] > 0 and r["tok_per_s"] > r["emb_per_s"]
    assert "llama-cpp-python is not importable" in summary["skipped"]["llama.cpp"]
    assert "not an executable python" in summary["skipped"]["sentence-transformers"]
    assert {(q["vs"], q["threads"]) for q in summary["ratios"]} == {("numpy", 1), ("numpy", 2)}
    # --repeats 1 without --rounds: one interleaved round, paired round by round in the ratios
    assert summary["rounds"] == 1 and summary["singles_per_round"] == [2]
    assert all(len(r["rounds"]) == 1 for r in summary["results"])
    assert all(q["rounds"]["count"] == 1 and q["rounds"]["batch_throughput_ratio"] > 0 for q in summary["ratios"])
    # JIT and numpy backends embed the same texts to the same vectors.
    assert all(cos > 0.999 for cos in summary["agreement"].values()) and summary["agreement"]
    assert [f["threads"] for f in summary["ffn"]] == [1, 2]
    # the peaks are probed before and after the rounds, and the higher of each is the one used
    for t in ("1", "2"):
        probes, peak = summary["peak_probes"][t], summary["peaks"][t]
        assert peak["int8_gops"] == max(probes["before"]["int8_gops"], probes["after"]["int8_gops"]) > 0
        assert peak["fp32_gflops"] == max(probes["before"]["fp32_gflops"], probes["after"]["fp32_gflops"]) > 0
    # memory: bandwidth probe, the floor it sets, RSS per peer, calls per forward, scaling
    assert all(summary["bandwidth_gbs"][t] > 0 for t in ("1", "2"))
    assert summary["streamed_weight_mb"] > 0 and set(summary["floor_ms"]) == {"1", "2"}
    assert all(r["peak_rss_mb"] >= r["load_rss_mb"] > 0 and 0 < r["floor_fraction"] for r in summary["results"])
    assert all(r["rss_anon_mb"] > 0 and r["rss_file_mb"] > 0 for r in summary["results"])
    assert summary["native_calls_per_forward"] > 0
    assert {(q["peer"], q["threads"]) for q in summary["scaling"]} == {("jit", 2), ("numpy", 2)}
    assert all(q["rounds"]["count"] == 1 for q in summary["scaling"])  # both thread counts in one round


def test_bench_runtime_table_and_bad_kind(tiny_gguf, no_llama_cpp):
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "runtime",
            "--model",
            str(tiny_gguf),
            "--threads",
            "1",
            "--kind",
            "short",
            "--peer",
            "jit,llama.cpp",
            "--singles",
            "1",
            "--repeats",
            "1",
            "--batch-texts",
            "3",
            "--rounds",
            "2",
            "--profile-ops",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ratios (embedpipe JIT / peer)" in res.output
    assert "interleaved rounds per kind: 2" in res.output and "load MB" in res.output
    assert "ops t=1 short:" in res.output  # the op profile, measured in the JIT peer's worker
    assert "memory read" in res.output and "native calls per single-text forward" in res.output
    assert "threads=1: int8 peak" in res.output and "(probed before / after the rounds: " in res.output
    assert "skipped llama.cpp: llama-cpp-python is not importable" in res.output
    bad = CliRunner().invoke(app, ["bench", "runtime", "--model", str(tiny_gguf), "--kind", "huge"])
    assert bad.exit_code != 0 and "unknown kind" in bad.output


def test_documents_have_the_promised_lengths():
    for kind, words in (("short", 9), ("long", 49), ("xlong", 400)):
        docs = documents(kind, 96)
        assert len(set(docs)) == 96
        mean = sum(len(d.split()) for d in docs) / len(docs)
        assert 0.85 * words <= mean <= 1.15 * words, (kind, mean)


def test_best_peaks_keeps_the_higher_probe_of_each_peak():
    from embedpipe.runtime.bench import best_peaks

    low = {"isa": "x", "int8_gops": 700.0, "fp32_gflops": 350.0}
    high = {"isa": "x", "int8_gops": 1400.0, "fp32_gflops": 340.0}
    assert best_peaks(low, high) == {"isa": "x", "int8_gops": 1400.0, "fp32_gflops": 350.0}
    assert best_peaks(None, high) == high and best_peaks(low, None) == low and best_peaks(None, None) is None
    # matrix units likewise, each unit on its own
    low["matrix_gops"], high["matrix_gops"] = {"amx_int8": 7000.0, "amx_bf16": 3000.0}, {"amx_int8": 6000.0}
    assert best_peaks(low, high)["matrix_gops"] == {"amx_int8": 7000.0, "amx_bf16": 3000.0}


def test_a_mistyped_peer_is_an_error_before_any_model_loads(tmp_path):
    from embedpipe.errors import EmbedpipeError
    from embedpipe.runtime.bench import BenchConfig, run_runtime_bench

    cfg = BenchConfig(model=str(tmp_path / "never-opened.gguf"), threads=[1], peers=("jit", "nope"))
    with pytest.raises(EmbedpipeError, match=r"unknown peer\(s\) nope; choose from jit,"):
        run_runtime_bench(cfg, report=lambda line: None)
