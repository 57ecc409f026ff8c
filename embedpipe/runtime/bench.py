"""`embedpipe bench runtime`: end-to-end embedding speed against llama.cpp and sentence-transformers.

For each document kind (short ~9 words, long ~49, extra-long ~400) and each thread count,
every peer is timed in the same run, loaded once per thread count in a worker process of its
own, all of them measured in the same interleaved rounds (``bench_rounds``): single-text latency (median of ``singles``
calls) and batch throughput (median over the ``rounds`` of one encode of ``batch_texts``
texts), and the JIT peer's ratios to each other peer (and each peer's 1 -> N thread speed-up)
both from those medians and as the median of the per-round ratios (robust to the machine
changing speed during the run).  Peers that cannot
run here (module missing, no python for sentence-transformers) are reported as skipped with
the reason.  The machine's int8-dot and fp32-FMA peaks are probed in the same run
(``embedpipe.codegen.peak.PeakProbe``), so throughput is also reported as a fraction of peak.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedpipe.codegen.matrix_units import describe_peaks
from embedpipe.runtime import bench_memory, bench_ops, bench_peers, bench_results, bench_rounds
from embedpipe.runtime.bench_report import format_result
from embedpipe.runtime.bench_texts import documents

if TYPE_CHECKING:
    from embedpipe.runtime.bert import BertEncoderModel
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.gemma_embedding import GemmaEmbeddingModel

KINDS: tuple[str, ...] = ("short", "long", "xlong")
PEERS: tuple[str, ...] = ("jit", "numpy", "llama.cpp", "sentence-transformers", "onnxruntime-fp32", "onnxruntime-int8")
# Extra-long batches are 96·~550 tokens per peer and thread count; a smaller default batch
# keeps the whole run within minutes (pass --batch-texts to override every kind).
DEFAULT_BATCH_TEXTS = {"short": 96, "long": 96, "xlong": 16}
TASK = "document"


@dataclass
class BenchConfig:
    model: str
    threads: list[int]
    peers: tuple[str, ...] = PEERS
    kinds: tuple[str, ...] = KINDS
    singles: int = 10  # single-text calls per peer and kind, spread over the rounds
    repeats: int = 3  # runs of the JIT peer's FFN probe and op profile
    rounds: int = 3  # interleaved rounds per kind (bench_rounds): one batch per peer each
    batch_texts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH_TEXTS))
    batch_size: int = 32
    st_python: str | None = None
    st_model: str | None = None
    onnx_dir: str | None = None  # ONNX exports (default: onnx/ beside the GGUF)
    max_tokens: int = 512  # longest document of the run (set by run_runtime_bench)
    profile_ops: bool = False  # also time each op of the JIT peer's batches (bench_ops)


def machine_info() -> dict:
    """The host, as the report's machine line gives it. ``matrix_units``: the tile-matrix units
    the CPU has (``codegen.matrix_units``), on which a peer may multiply where the JIT uses
    vector dots (ONNX Runtime's int8 GEMM runs on AMX), while the int8 peak the fractions are
    taken of is the vector dot's."""
    from embedpipe.codegen.matrix_units import present_units

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg": list(load) if load else None,
        "python": platform.python_version(),
        "matrix_units": [u.name for u in present_units()],
    }


def model_ops_per_token(model: BertEncoderModel | GemmaEmbeddingModel) -> tuple[float, float]:
    """(all weight-matmul ops, FFN ops) per token: 2 per multiply-add."""
    cfg = model.cfg
    if not hasattr(cfg, "n_kv_head"):  # BERT family: q, k, v, o square; FFN up and down
        attn, ffn = 4 * cfg.hidden * cfg.hidden, 2 * cfg.hidden * cfg.ffn
        return 2.0 * cfg.n_layers * (attn + ffn), 2.0 * cfg.n_layers * ffn
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    attn = cfg.hidden * (q + 2 * kv) + cfg.n_head * cfg.head_dim_v * cfg.hidden
    ffn = 3 * cfg.hidden * cfg.ffn
    return 2.0 * cfg.n_layers * (attn + ffn), 2.0 * cfg.n_layers * ffn


def measure_peaks(threads: int) -> dict | None:
    """Best-of-3 int8-dot and fp32-FMA peaks on ``threads`` threads (None without JIT), and
    the peak of each matrix unit the process may use (``matrix_gops``, by unit name)."""
    try:
        from embedpipe.codegen.isa import detect_isa
        from embedpipe.codegen.peak import PeakProbe, matrix_peaks

        isa = detect_isa()
        probes = {kind: PeakProbe(isa, threads, kind) for kind in ("int", "float")}
    except Exception:  # no usable LLVM target: fractions are simply not reported
        return None
    return {
        "isa": isa.name,
        "int8_gops": probes["int"].gops(),
        "fp32_gflops": probes["float"].gops(),
        "matrix_gops": matrix_peaks(isa, threads),
    }


def best_peaks(before: dict | None, after: dict | None) -> dict | None:
    """The higher of two probes of each peak (``measure_peaks`` before and after the rounds).

    A peak is what the cores can do at best; on a shared host one probe can land in a minute
    when the two vCPUs share a physical core, and a low peak would overstate every fraction."""
    if not before or not after:
        return before or after
    best = {**before, **{k: max(before[k], after[k]) for k in ("int8_gops", "fp32_gflops")}}
    units = {**before.get("matrix_gops", {}), **after.get("matrix_gops", {})}
    if units:
        best["matrix_gops"] = {u: max(p.get("matrix_gops", {}).get(u, 0.0) for p in (before, after)) for u in units}
    return best


#: Relative change between the two peak probes above which the report says so.
PEAK_SPREAD = 0.2


def _probe_peaks_again(summary: dict, threads: tuple[int, ...], report: Callable[[str], None]) -> None:
    """Probe the peaks once more after the rounds and keep the higher of each (``best_peaks``);
    both probes go in ``summary["peak_probes"]``, and a change of more than PEAK_SPREAD is
    reported."""
    for t in threads:
        before, after = summary["peaks"].get(str(t)), measure_peaks(t)
        summary["peak_probes"][str(t)] = {"before": before, "after": after}
        summary["peaks"][str(t)] = best_peaks(before, after)
        if before and after and abs(after["int8_gops"] / before["int8_gops"] - 1) > PEAK_SPREAD:
            report(
                f"threads={t}: the int8 peak probe read {before['int8_gops']:.0f} GOPS before the rounds "
                f"and {after['int8_gops']:.0f} after; fractions of peak use the higher"
            )


def ffn_timing(embedder: Embedder, tokens: int, repeats: int) -> dict:
    """One layer's FFN matmuls (gate|up fused, down) at ``tokens`` rows: median ms and GOPS
    (run in the JIT peer's worker; the parent adds the fraction of its int8 peak)."""
    from embedpipe.codegen.bench import call_seconds

    layer = embedder.model.layers[0]
    cfg = embedder.model.cfg
    rng = np.random.default_rng(0)
    h = rng.standard_normal((tokens, cfg.hidden)).astype(np.float32)
    g = rng.standard_normal((tokens, cfg.ffn)).astype(np.float32)
    sec = statistics.median(call_seconds(lambda: (layer.w_gate_up(h), layer.w_down(g)), repeats))
    return {"tokens": tokens, "ms": sec * 1e3, "gops": 2.0 * 3 * tokens * cfg.hidden * cfg.ffn / sec / 1e9}


def run_runtime_bench(cfg: BenchConfig, report: Callable[[str], None] = print) -> dict:
    from embedpipe.runtime.embedder import Embedder

    bench_peers.check_peer_names(cfg.peers)
    probe = Embedder.load(cfg.model, backend="numpy", threads=1)
    docs = {kind: documents(kind, cfg.batch_texts[kind]) for kind in cfg.kinds}
    too_long = [
        k for k, texts in docs.items() if max(map(len, probe.tokenize(texts, TASK, truncate=True))) >= probe.max_tokens
    ]
    for kind in too_long:  # a truncated kind would time different work per peer
        report(f"skipped kind {kind}: its documents reach the model's {probe.max_tokens}-token limit")
        del docs[kind]
    cfg.kinds = tuple(k for k in cfg.kinds if k in docs)
    formatted = {kind: probe.format_texts(texts, TASK) for kind, texts in docs.items()}
    token_counts = {kind: [len(s) for s in probe.tokenize(texts, TASK)] for kind, texts in docs.items()}
    cfg.max_tokens = max(max(v) for v in token_counts.values())
    ops_token, _ = model_ops_per_token(probe.model)
    del probe
    summary: dict = {
        "machine": machine_info(),
        "model": str(cfg.model),
        "task": TASK,
        "batch_size": cfg.batch_size,
        "rounds": cfg.rounds,
        "singles_per_round": bench_rounds.singles_per_round(cfg.singles, cfg.rounds),
        "texts": {
            k: {
                "count": len(docs[k]),
                "words_mean": float(np.mean([len(t.split()) for t in docs[k]])),
                "tokens_mean": float(np.mean(token_counts[k])),
            }
            for k in cfg.kinds
        },
        "peaks": {},
        "peak_probes": {},
        "ffn": [],
        "results": [],
        "skipped": {},
        "agreement": {},
        "bandwidth_gbs": {},
        "floor_ms": {},
        "native_calls_per_forward": None,
        "streamed_weight_mb": None,
        "op_profile": [],
    }
    for threads in cfg.threads:
        peak = measure_peaks(threads)
        summary["peaks"][str(threads)] = peak
        if peak:
            report(
                f"threads={threads}: peaks int8 {peak['int8_gops']:.0f} GOPS, fp32 {peak['fp32_gflops']:.0f} GFLOP/s"
                + (f"; matrix units {describe_peaks(peak['matrix_gops'])}" if peak.get("matrix_gops") else "")
            )
        bandwidth = bench_memory.read_bandwidth_gbs(threads)
        summary["bandwidth_gbs"][str(threads)] = bandwidth
        if bandwidth:
            report(f"threads={threads}: memory read {bandwidth:.1f} GB/s")
    vectors = _measure_interleaved(cfg, formatted, token_counts, summary, ops_token, report)
    for threads in cfg.threads:
        bench_results.agreement(summary["agreement"], vectors.get(threads, {}), threads)
    for r in summary["results"]:  # every peer streams the same model's weights
        floor = summary["floor_ms"].get(str(r["threads"]))
        r["floor_fraction"] = floor / r["single_ms"] if floor else None
    summary["ratios"] = bench_results.ratios(summary["results"])
    summary["scaling"] = bench_results.thread_scaling(summary["results"])
    return summary


def _measure_interleaved(
    cfg: BenchConfig,
    formatted: dict[str, list[str]],
    token_counts: dict[str, list[int]],
    summary: dict,
    ops_token: float,
    report: Callable[[str], None],
) -> dict[int, dict[str, np.ndarray]]:
    """Load every peer at every thread count in a worker of its own, run the interleaved rounds
    over all of them (so the 1 -> N thread scaling pairs rounds too), add one result per peer,
    thread count and kind to ``summary``; return, per thread count, each peer's vectors of the
    first kind's first texts."""
    procs: dict[tuple[str, int], bench_rounds.PeerProcess] = {}
    vectors: dict[int, dict[str, np.ndarray]] = {}

    def skip(who: tuple[str, int], why: str) -> None:
        summary["skipped"][who[0]] = why
        report(f"skipped {who[0]} t={who[1]}: {why}")

    try:
        for threads in cfg.threads:
            for peer in cfg.peers:
                try:
                    procs[peer, threads] = proc = bench_rounds.PeerProcess(peer, cfg, threads)
                except bench_peers.PeerUnavailable as exc:
                    skip((peer, threads), str(exc))
                    continue
                mb = proc.load_memory_mb.get("peak_rss_mb") or 0
                note = f" ({proc.note})" if proc.note else ""
                report(f"loaded {peer} t={threads} in its own process: {proc.load_s:.1f} s, peak RSS {mb:.0f} MB{note}")
                if proc.note:
                    summary.setdefault("notes", {})[peer] = proc.note

        def progress(kind: str, r: int, peers: dict[tuple[str, int], bench_rounds.RoundSample]) -> None:
            report(
                f"round {r + 1}/{cfg.rounds} {kind}: "
                + ", ".join(
                    f"{p} t={t} batch {s.batch_s:.2f} s, single {1e3 * statistics.median(s.single_s):.1f} ms"
                    for (p, t), s in peers.items()
                )
            )

        samples = bench_rounds.run_rounds(procs, formatted, cfg.rounds, cfg.singles, skip, progress)
        _probe_peaks_again(summary, cfg.threads, report)
        for (peer, threads), proc in procs.items():
            if ((peer, threads), cfg.kinds[0]) not in samples:
                continue
            try:
                vectors.setdefault(threads, {})[peer] = np.asarray(
                    proc.call("vectors", texts=formatted[cfg.kinds[0]][:8])["vectors"], np.float32
                )
                memory = proc.call("memory")["memory_mb"]
                if peer == "jit":
                    _jit_extras(summary, proc, cfg, formatted, token_counts, threads, report)
            except bench_peers.PeerUnavailable as exc:
                skip((peer, threads), str(exc))
                continue
            peak = summary["peaks"].get(str(threads))
            for kind in cfg.kinds:
                res = bench_results.peer_result(
                    peer, threads, kind, samples[(peer, threads), kind], len(formatted[kind]), sum(token_counts[kind])
                )
                res.load_rss_mb = proc.load_memory_mb.get("peak_rss_mb")
                res.peak_rss_mb = memory.get("peak_rss_mb")
                res.rss_anon_mb, res.rss_file_mb = memory.get("anon_mb"), memory.get("file_mb")
                if peak:
                    res.int8_peak_fraction = res.tok_per_s * ops_token / (peak["int8_gops"] * 1e9)
                    res.fp32_peak_fraction = res.tok_per_s * ops_token / (peak["fp32_gflops"] * 1e9)
                summary["results"].append(asdict(res))
                report(format_result(res))
    finally:
        for proc in procs.values():
            proc.close()
    return vectors


def _jit_extras(
    summary: dict,
    jit: bench_rounds.PeerProcess,
    cfg: BenchConfig,
    formatted: dict[str, list[str]],
    token_counts: dict[str, list[int]],
    threads: int,
    report: Callable[[str], None],
) -> None:
    """What only the embedpipe JIT peer reports, asked of its worker after the rounds: weight bytes
    a forward streams and the floor they set at the measured bandwidth, native calls per
    single-text forward, the FFN matmuls' fraction of the int8 peak, the op profile."""

    def extra(name: str, **args):
        return jit.call("extra", name=name, args=args)["value"]

    streamed = extra("streamed_weight_bytes")
    summary["streamed_weight_mb"] = streamed / 1e6
    bandwidth = summary["bandwidth_gbs"].get(str(threads))
    if bandwidth:
        summary["floor_ms"][str(threads)] = streamed / (bandwidth * 1e9) * 1e3
    summary["native_calls_per_forward"] = extra("native_calls_per_forward", text=formatted[cfg.kinds[0]][0])
    if cfg.profile_ops:
        for kind in cfg.kinds:
            prof = extra("profile_ops", texts=formatted[kind], repeats=cfg.repeats, batch_size=cfg.batch_size)
            summary["op_profile"].append({"threads": threads, "kind": kind, **prof})
            for line in bench_ops.format_profile(kind, threads, prof):
                report(line)
    if "short" in cfg.kinds and extra("has_ffn"):
        ffn = extra("ffn", tokens=sum(token_counts["short"][: cfg.batch_size]), repeats=cfg.repeats)
        peak = summary["peaks"].get(str(threads))
        ffn["int8_peak_fraction"] = ffn["gops"] / peak["int8_gops"] if peak else None
        summary["ffn"].append({"threads": threads, **ffn})


def default_st_model(model_path: str | os.PathLike[str]) -> str | None:
    """The sentence-transformers checkout the store keeps beside the GGUF (hf/<archive root>), if any."""
    hf = Path(model_path).parent / "hf"
    found = sorted(hf.glob("**/modules.json"), key=lambda p: len(p.parts)) if hf.is_dir() else []
    return str(found[0].parent) if found else None
