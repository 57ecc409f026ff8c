"""`embedpipe bench runtime`: end-to-end embedding speed against llama.cpp and sentence-transformers.

For each document kind (short ~9 words, long ~49, extra-long ~400) and each thread count,
every peer is timed in the same run: single-text latency (median of ``singles`` calls) and
batch throughput (median of ``repeats`` encodes of ``batch_texts`` texts).  Peers that cannot
run here (module missing, no python for sentence-transformers) are reported as skipped with
the reason.  The machine's int8-dot and fp32-FMA peaks are probed in the same run
(``embedpipe.codegen.peak.PeakProbe``), so throughput is also reported as a fraction of peak.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedpipe.runtime import bench_memory, bench_ops, bench_peers
from embedpipe.runtime.bench_texts import documents

KINDS: tuple[str, ...] = ("short", "long", "xlong")
PEERS: tuple[str, ...] = ("jit", "numpy", "llama.cpp", "sentence-transformers", "onnxruntime-fp32", "onnxruntime-int8")
# Extra-long batches are 96·~550 tokens per peer and thread count; a smaller default batch
# keeps the whole run within minutes (pass --batch-texts to override every kind).
DEFAULT_BATCH_TEXTS = {"short": 96, "long": 96, "xlong": 16}
TASK = "document"


@dataclass
class PeerResult:
    peer: str
    threads: int
    kind: str
    single_ms: float
    batch_texts: int
    batch_s: float
    emb_per_s: float
    tok_per_s: float
    # Process CPU seconds (all threads) of the same calls: on a shared, oversubscribed machine
    # wall time mostly measures the neighbours; CPU time measures the work.
    single_cpu_ms: float | None = None
    batch_cpu_s: float | None = None
    int8_peak_fraction: float | None = None
    fp32_peak_fraction: float | None = None
    # weight-streaming floor / single latency (1.0 = at the floor); peak RSS of the peer's
    # process (or subprocess) while it loaded and ran
    floor_fraction: float | None = None
    peak_rss_mb: float | None = None


@dataclass
class BenchConfig:
    model: str
    threads: list[int]
    peers: tuple[str, ...] = PEERS
    kinds: tuple[str, ...] = KINDS
    singles: int = 10
    repeats: int = 3
    batch_texts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH_TEXTS))
    batch_size: int = 32
    st_python: str | None = None
    st_model: str | None = None
    onnx_dir: str | None = None  # ONNX exports (default: onnx/ beside the GGUF)
    max_tokens: int = 512  # longest document of the run (set by run_runtime_bench)
    profile_ops: bool = False  # also time each op of the JIT peer's batches (bench_ops)


def machine_info() -> dict:
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
    }


def model_ops_per_token(model) -> tuple[float, float]:
    """(all weight-matmul ops, FFN ops) per token: 2 per multiply-add."""
    cfg = model.cfg
    if not hasattr(cfg, "n_kv_head"):  # BERT family: q, k, v, o square; FFN up and down
        attn, ffn = 4 * cfg.hidden * cfg.hidden, 2 * cfg.hidden * cfg.ffn
        return 2.0 * cfg.n_layers * (attn + ffn), 2.0 * cfg.n_layers * ffn
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    attn = cfg.hidden * (q + 2 * kv) + cfg.n_head * cfg.head_dim_v * cfg.hidden
    ffn = 3 * cfg.hidden * cfg.ffn
    return 2.0 * cfg.n_layers * (attn + ffn), 2.0 * cfg.n_layers * ffn


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    return _median_times(fn, repeats)[0]


def _median_times(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``fn`` (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c, start = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def time_peer(
    name: str,
    encode: Callable[[list[str]], object],
    threads: int,
    kind: str,
    texts: list[str],
    tokens: int,
    cfg: BenchConfig,
) -> PeerResult:
    """Median single-text latency over the first ``singles`` texts, then batch throughput."""
    encode(texts[:1])
    singles, single_cpu = [], []
    for text in (texts * (cfg.singles // len(texts) + 1))[: cfg.singles]:
        c, start = time.process_time(), time.perf_counter()
        encode([text])
        singles.append(time.perf_counter() - start)
        single_cpu.append(time.process_time() - c)
    batch, batch_cpu = _median_times(lambda: encode(texts), cfg.repeats)
    return PeerResult(
        name,
        threads,
        kind,
        1e3 * statistics.median(singles),
        len(texts),
        batch,
        len(texts) / batch,
        tokens / batch,
        1e3 * statistics.median(single_cpu),
        batch_cpu,
    )


def measure_peaks(threads: int) -> dict | None:
    """Best-of-3 int8-dot and fp32-FMA peaks on ``threads`` threads (None without JIT)."""
    try:
        from embedpipe.codegen.isa import detect_isa
        from embedpipe.codegen.peak import PeakProbe

        isa = detect_isa()
        probes = {kind: PeakProbe(isa, threads, kind) for kind in ("int", "float")}
    except Exception:  # no usable LLVM target: fractions are simply not reported
        return None
    return {
        "isa": isa.name,
        "int8_gops": probes["int"].gops(),
        "fp32_gflops": probes["float"].gops(),
    }


def ffn_fraction(embedder, tokens: int, peak: dict | None, repeats: int) -> dict:
    """One layer's FFN matmuls (gate|up fused, down) at ``tokens`` rows as GOPS and % of int8 peak."""
    layer = embedder.model.layers[0]
    cfg = embedder.model.cfg
    rng = np.random.default_rng(0)
    h = rng.standard_normal((tokens, cfg.hidden)).astype(np.float32)
    g = rng.standard_normal((tokens, cfg.ffn)).astype(np.float32)
    sec = _median_time(lambda: (layer.w_gate_up(h), layer.w_down(g)), repeats)
    gops = 2.0 * 3 * tokens * cfg.hidden * cfg.ffn / sec / 1e9
    return {
        "tokens": tokens,
        "ms": sec * 1e3,
        "gops": gops,
        "int8_peak_fraction": gops / peak["int8_gops"] if peak else None,
    }


def run_runtime_bench(cfg: BenchConfig, report: Callable[[str], None] = print) -> dict:
    from embedpipe.runtime.embedder import Embedder

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
        "texts": {
            k: {
                "count": len(docs[k]),
                "words_mean": float(np.mean([len(t.split()) for t in docs[k]])),
                "tokens_mean": float(np.mean(token_counts[k])),
            }
            for k in cfg.kinds
        },
        "peaks": {},
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
            )
        bandwidth = bench_memory.read_bandwidth_gbs(threads)
        summary["bandwidth_gbs"][str(threads)] = bandwidth
        if bandwidth:
            report(f"threads={threads}: memory read {bandwidth:.1f} GB/s")
        vectors: dict[str, np.ndarray] = {}
        first = len(summary["results"])
        for peer in cfg.peers:
            bench_memory.reset_peak_rss()
            children = bench_memory.children_peak_rss_mb()
            try:
                runner = bench_peers.make_peer(peer, cfg, threads)
            except bench_peers.PeerUnavailable as exc:
                summary["skipped"][peer] = str(exc)
                report(f"skipped {peer}: {exc}")
                continue
            with runner:
                try:
                    results = runner.run(formatted, {k: sum(v) for k, v in token_counts.items()}, cfg, time_peer)
                    vectors[peer] = runner.vectors(formatted[cfg.kinds[0]][:8])
                except bench_peers.PeerUnavailable as exc:
                    summary["skipped"][peer] = str(exc)
                    report(f"skipped {peer}: {exc}")
                    continue
                child = bench_memory.children_peak_rss_mb()
                rss = child if child > children else bench_memory.peak_rss_mb()
                if peer == "jit":
                    _jit_extras(summary, runner.embedder, formatted[cfg.kinds[0]][0], threads, bandwidth)
                for res in results:
                    res.peak_rss_mb = rss
                    if peak:
                        res.int8_peak_fraction = res.tok_per_s * ops_token / (peak["int8_gops"] * 1e9)
                        res.fp32_peak_fraction = res.tok_per_s * ops_token / (peak["fp32_gflops"] * 1e9)
                    summary["results"].append(asdict(res))
                    report(format_result(res))
                if peer == "jit" and cfg.profile_ops:
                    for kind in cfg.kinds:
                        ids = runner.embedder.tokenize(formatted[kind], "none")
                        prof = bench_ops.profile_ops(runner.embedder, ids, cfg.repeats, cfg.batch_size)
                        summary["op_profile"].append({"threads": threads, "kind": kind, **prof})
                        for line in bench_ops.format_profile(kind, threads, prof):
                            report(line)
                if peer == "jit" and "short" in cfg.kinds and hasattr(runner.embedder.model.layers[0], "w_gate_up"):
                    tokens = sum(token_counts["short"][: cfg.batch_size])
                    summary["ffn"].append(
                        {"threads": threads, **ffn_fraction(runner.embedder, tokens, peak, cfg.repeats)}
                    )
        _agreement(summary["agreement"], vectors, threads)
        floor = summary["floor_ms"].get(str(threads))
        for r in summary["results"][first:]:  # every peer streams the same model's weights
            r["floor_fraction"] = floor / r["single_ms"] if floor else None
    summary["ratios"] = ratios(summary["results"])
    summary["scaling"] = thread_scaling(summary["results"])
    return summary


def _jit_extras(summary: dict, embedder, text: str, threads: int, bandwidth: float | None) -> None:
    """Weight bytes a forward streams, the floor they set at the measured bandwidth, and
    native calls per single-text forward (embedpipe JIT only)."""
    streamed = bench_memory.streamed_weight_bytes(embedder.model)
    summary["streamed_weight_mb"] = streamed / 1e6
    if bandwidth:
        summary["floor_ms"][str(threads)] = streamed / (bandwidth * 1e9) * 1e3
    summary["native_calls_per_forward"] = bench_memory.native_calls_per_forward(embedder, text)


def thread_scaling(results: list[dict]) -> list[dict]:
    """Batch throughput at the most threads over one thread, per peer and kind (wall and,
    load-robust, tokens per CPU-second times threads)."""
    index = {(r["peer"], r["threads"], r["kind"]): r for r in results}
    out = []
    for (peer, threads, kind), r in index.items():
        one = index.get((peer, 1, kind))
        if threads == 1 or one is None or threads != max(t for p, t, k in index if p == peer and k == kind):
            continue
        out.append({"peer": peer, "kind": kind, "threads": threads, "batch_speedup": r["emb_per_s"] / one["emb_per_s"]})
    return out


def _agreement(out: dict, vectors: dict[str, np.ndarray], threads: int) -> None:
    """Min cosine of each peer's vectors against embedpipe JIT's (or numpy's) on the same texts."""
    base_name = "jit" if "jit" in vectors else "numpy"
    base = vectors.get(base_name)
    if base is None:
        return
    for name, vecs in vectors.items():
        if name != base_name:
            a = base / np.linalg.norm(base, axis=1, keepdims=True)
            b = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            out[f"{name} vs {base_name} @{threads}"] = float((a * b).sum(1).min())


def ratios(results: list[dict]) -> list[dict]:
    """embedpipe JIT against every other peer at equal threads and document kind:
    batch throughput ratio (>1: JIT faster) and single latency ratio (<1: JIT faster)."""
    index = {(r["peer"], r["threads"], r["kind"]): r for r in results}
    out = []
    for (peer, threads, kind), r in index.items():
        ours = index.get(("jit", threads, kind))
        if peer == "jit" or ours is None:
            continue
        cpu = {}
        if ours.get("batch_cpu_s") and r.get("batch_cpu_s"):
            cpu = {
                "batch_cpu_ratio": r["batch_cpu_s"] / ours["batch_cpu_s"],
                "single_cpu_ratio": ours["single_cpu_ms"] / r["single_cpu_ms"],
            }
        out.append(
            {
                "threads": threads,
                "kind": kind,
                "vs": peer,
                "batch_throughput_ratio": ours["emb_per_s"] / r["emb_per_s"],
                "single_latency_ratio": ours["single_ms"] / r["single_ms"],
                **cpu,
            }
        )
    return out


def format_result(r: PeerResult) -> str:
    pk = f"{100 * r.int8_peak_fraction:5.1f}%" if r.int8_peak_fraction is not None else "    -"
    return (
        f"{r.peer:22} t={r.threads} {r.kind:6} single {r.single_ms:8.1f} ms  batch({r.batch_texts}) "
        f"{r.emb_per_s:7.1f} emb/s {r.tok_per_s:8.0f} tok/s  int8pk {pk}"
    )


def format_summary(summary: dict) -> list[str]:
    lines = [
        f"machine: {summary['machine']['cpu']} ({summary['machine']['cores']} cores), load {summary['machine']['load_avg']}",
        f"model: {summary['model']}",
        "texts: "
        + ", ".join(
            f"{k} {v['count']}x ~{v['words_mean']:.0f} words/{v['tokens_mean']:.0f} tokens"
            for k, v in summary["texts"].items()
        ),
    ]
    for t, bw in summary.get("bandwidth_gbs", {}).items():
        floor = summary.get("floor_ms", {}).get(t)
        lines.append(
            f"threads={t}: memory read {bw:.1f} GB/s" + (f"; floor {floor:.2f} ms per single text" if floor else "")
            if bw
            else f"threads={t}: memory read bandwidth not measured"
        )
    if summary.get("streamed_weight_mb"):
        lines.append(
            f"weights streamed per forward: {summary['streamed_weight_mb']:.1f} MB; "
            f"native calls per single-text forward: {summary.get('native_calls_per_forward')}"
        )
    lines.append(
        f"{'peer':22} {'thr':>3} {'kind':6} {'single ms':>9} {'cpu ms':>7} {'%floor':>6} {'emb/s':>8} {'tok/s':>8} "
        f"{'tok/cpu-s':>9} {'%int8pk':>7} {'%fp32pk':>7} {'RSS MB':>7}"
    )
    for r in summary["results"]:
        i8 = f"{100 * r['int8_peak_fraction']:6.1f}%" if r["int8_peak_fraction"] is not None else "      -"
        f32 = f"{100 * r['fp32_peak_fraction']:6.1f}%" if r["fp32_peak_fraction"] is not None else "      -"
        cpu_ms = f"{r['single_cpu_ms']:7.1f}" if r.get("single_cpu_ms") is not None else "      -"
        per_cpu = f"{r['tok_per_s'] * r['batch_s'] / r['batch_cpu_s']:9.0f}" if r.get("batch_cpu_s") else "        -"
        floor = f"{100 * r['floor_fraction']:5.1f}%" if r.get("floor_fraction") else "     -"
        rss = f"{r['peak_rss_mb']:7.0f}" if r.get("peak_rss_mb") else "      -"
        lines.append(
            f"{r['peer']:22} {r['threads']:3} {r['kind']:6} {r['single_ms']:9.1f} {cpu_ms} {floor} "
            f"{r['emb_per_s']:8.1f} {r['tok_per_s']:8.0f} {per_cpu} {i8} {f32} {rss}"
        )
    for q in summary.get("scaling", []):
        lines.append(
            f"scaling {q['peer']:22} {q['kind']:6} 1 -> {q['threads']} threads: batch x{q['batch_speedup']:.2f}"
        )
    lines.append("ratios (embedpipe JIT / peer): batch throughput (>1 faster), single latency (<1 faster)")
    for q in summary["ratios"]:
        cpu = (
            f"   per CPU-second: batch x{q['batch_cpu_ratio']:.2f}  single x{q['single_cpu_ratio']:.2f}"
            if "batch_cpu_ratio" in q
            else ""
        )
        lines.append(
            f"  t={q['threads']} {q['kind']:6} vs {q['vs']:22} batch x{q['batch_throughput_ratio']:.2f}  "
            f"single x{q['single_latency_ratio']:.2f}{cpu}"
        )
    for f in summary["ffn"]:
        frac = f"{100 * f['int8_peak_fraction']:.1f}% of int8 peak" if f["int8_peak_fraction"] else "peak unknown"
        lines.append(f"FFN matmuls (gate+up+down, T={f['tokens']}) t={f['threads']}: {f['gops']:.0f} GOPS, {frac}")
    for p in summary.get("op_profile", []):
        lines.extend(bench_ops.format_profile(p["kind"], p["threads"], p))
    for name, cos in summary["agreement"].items():
        lines.append(f"agreement {name}: min cosine {cos:.5f}")
    for name, why in summary["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return lines


def default_st_model(model_path: str | os.PathLike[str]) -> str | None:
    """The sentence-transformers checkout the store keeps beside the GGUF (hf/<archive root>), if any."""
    hf = Path(model_path).parent / "hf"
    found = sorted(hf.glob("**/modules.json"), key=lambda p: len(p.parts)) if hf.is_dir() else []
    return str(found[0].parent) if found else None
