"""The figures derived from the interleaved rounds: medians, per-round ratios, thread scaling,
agreement between the peers' vectors."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime import bench_report, bench_results, bench_rounds


def _result(peer: str, rounds: list[tuple[float, float, float, float]]) -> dict:
    """A result of ``peer_result`` over rounds of (batch_s, batch_cpu_s, single_s, single_cpu_s)."""
    samples = [bench_rounds.RoundSample(b, bc, [s, s], [sc, sc]) for b, bc, s, sc in rounds]
    return vars(bench_results.peer_result(peer, 2, "short", samples, texts=10, tokens=100))


def test_ratios_take_the_median_of_per_round_ratios():
    # The machine's speed changes between rounds; within a round both peers see the same phase.
    # JIT batch 1 s / 4 s / 2 s, the peer 2 s / 8 s / 1 s: per round x2, x2, x0.5 -> median x2,
    # while the medians (2 s and 2 s) say x1.
    jit = _result("jit", [(1.0, 2.0, 0.010, 0.02), (4.0, 8.0, 0.040, 0.08), (2.0, 4.0, 0.020, 0.04)])
    peer = _result("peer", [(2.0, 4.0, 0.030, 0.03), (8.0, 12.0, 0.160, 0.16), (1.0, 1.0, 0.020, 0.02)])
    assert jit["emb_per_s"] == 5.0 and jit["single_ms"] == 20.0 and jit["batch_cpu_s"] == 4.0
    (q,) = bench_results.ratios([jit, peer])
    assert q["vs"] == "peer" and q["batch_throughput_ratio"] == pytest.approx(1.0)
    assert q["single_latency_ratio"] == pytest.approx(20 / 30)
    r = q["rounds"]
    assert r["count"] == 3
    assert r["batch_throughput_ratio"] == pytest.approx(2.0)  # 2, 2, 0.5
    assert r["single_latency_ratio"] == pytest.approx(1 / 3)  # 1/3, 1/4, 1
    assert r["batch_cpu_ratio"] == pytest.approx(1.5)  # 2, 1.5, 0.25
    assert r["single_cpu_ratio"] == pytest.approx(2 / 3)  # 2/3, 1/2, 2
    lines = bench_report.format_summary(
        {
            "machine": {"cpu": "x", "cores": 2, "load_avg": None},
            "model": "m",
            "texts": {},
            "rounds": 3,
            "results": [jit, peer],
            "ratios": [q],
            "ffn": [],
            "agreement": {},
            "skipped": {},
        }
    )
    assert any("vs peer" in line and "batch x1.00 [x2.00]" in line for line in lines)
    assert lines[0] == "machine: x (2 cores), load None"


def test_the_machine_line_names_matrix_units_the_jit_does_not_use():
    summary = {"machine": {"cpu": "x", "cores": 2, "load_avg": None, "matrix_units": ["amx_bf16", "amx_int8"]}}
    rest = {"model": "m", "texts": {}, "results": [], "ratios": [], "ffn": [], "agreement": {}, "skipped": {}}
    line = bench_report.format_summary({**summary, **rest})[0]
    assert line.startswith("machine: x (2 cores), load None; matrix units amx_bf16, amx_int8")
    assert "%int8pk" in line


def test_the_peak_line_gives_the_matrix_units_peaks():
    peak = {"isa": "x", "int8_gops": 1200.0, "fp32_gflops": 300.0}
    with_units = {**peak, "matrix_gops": {"amx_int8": 6900.0, "amx_bf16": 3600.0}}
    rest = {"model": "m", "texts": {}, "results": [], "ratios": [], "ffn": [], "agreement": {}, "skipped": {}}
    machine = {"machine": {"cpu": "x", "cores": 2, "load_avg": None}}
    for probe, want in ((peak, None), (with_units, "; matrix-unit peaks amx_int8 6900 GOPS, amx_bf16 3600 GFLOP/s")):
        summary = {**machine, **rest, "peaks": {"2": probe}, "peak_probes": {"2": {"before": probe, "after": None}}}
        (line,) = [x for x in bench_report.format_summary(summary) if x.startswith("threads=2: int8 peak")]
        assert ("matrix-unit peaks" in line) == (want is not None) and (want is None or want in line)


def test_thread_scaling_pairs_the_rounds():
    # 1 and 2 threads of one peer in the same rounds: x2, x1.5, x3 per round -> median x2
    one = _result("jit", [(2.0, 2.0, 0.01, 0.01), (3.0, 3.0, 0.01, 0.01), (3.0, 3.0, 0.01, 0.01)])
    two = {**_result("jit", [(1.0, 2.0, 0.01, 0.01), (2.0, 4.0, 0.01, 0.01), (1.0, 2.0, 0.01, 0.01)]), "threads": 2}
    one["threads"] = 1
    (q,) = bench_results.thread_scaling([one, two])
    assert q["batch_speedup"] == pytest.approx(3.0)  # medians: 3 s and 1 s
    assert q["rounds"] == {"count": 3, "batch_speedup": pytest.approx(2.0)}


def test_ratios_pair_equal_threads_and_kinds():
    rows = [
        {"peer": p, "threads": 2, "kind": "short", "emb_per_s": e, "single_ms": s}
        for p, e, s in (("jit", 60.0, 20.0), ("llama.cpp", 30.0, 40.0))
    ]
    (q,) = bench_results.ratios(rows)
    assert q["vs"] == "llama.cpp" and q["batch_throughput_ratio"] == 2.0 and q["single_latency_ratio"] == 0.5


def test_agreement_is_the_worst_cosine_against_the_jit_vectors():
    rng = np.random.default_rng(0)
    jit = rng.standard_normal((4, 8)).astype(np.float32)
    close = 3.0 * jit  # scale does not matter: both sides are normalized
    flipped = jit.copy()
    flipped[2] *= -1
    out: dict = {}
    bench_results.agreement(out, {"jit": jit, "close": close, "flipped": flipped}, threads=2)
    assert out["close vs jit @2"] == pytest.approx(1.0, abs=1e-6)
    assert out["flipped vs jit @2"] == pytest.approx(-1.0, abs=1e-6)
    numpy_only: dict = {}
    bench_results.agreement(numpy_only, {"numpy": jit, "other": close}, threads=1)
    assert set(numpy_only) == {"other vs numpy @1"}
    none: dict = {}
    bench_results.agreement(none, {"other": close}, threads=1)
    assert none == {}
