"""The text report of `embedpipe bench runtime`: one row per peer, kind and thread count (today's
medians), then the JIT's ratios to each peer, as ratios of the medians and, in brackets, as the
median of the per-round ratios of the interleaved rounds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedpipe.codegen.matrix_units import describe_peaks
from embedpipe.runtime import bench_ops

if TYPE_CHECKING:
    from embedpipe.runtime.bench_results import PeerResult


def format_result(r: PeerResult) -> str:
    pk = f"{100 * r.int8_peak_fraction:5.1f}%" if r.int8_peak_fraction is not None else "    -"
    return (
        f"{r.peer:22} t={r.threads} {r.kind:6} single {r.single_ms:8.1f} ms  batch({r.batch_texts}) "
        f"{r.emb_per_s:7.1f} emb/s {r.tok_per_s:8.0f} tok/s  int8pk {pk}"
    )


def format_summary(summary: dict) -> list[str]:
    machine = summary["machine"]
    units = machine.get("matrix_units")
    lines = [
        f"machine: {machine['cpu']} ({machine['cores']} cores), load {machine['load_avg']}"
        + (
            f"; matrix units {', '.join(units)} (peers may use them; the JIT's products and %int8pk: the vector dot, "
            "its attention in int8 models: amx_bf16 where it runs)"
            if units
            else ""
        ),
        f"model: {summary['model']}",
        "texts: "
        + ", ".join(
            f"{k} {v['count']}x ~{v['words_mean']:.0f} words/{v['tokens_mean']:.0f} tokens"
            for k, v in summary["texts"].items()
        ),
    ]
    for t, probes in summary.get("peak_probes", {}).items():
        peak = summary["peaks"].get(t)
        if peak:
            read = " / ".join(f"{p['int8_gops']:.0f}" if p else "-" for p in (probes["before"], probes["after"]))
            lines.append(
                f"threads={t}: int8 peak {peak['int8_gops']:.0f} GOPS (probed before / after the rounds: {read})"
                + (
                    f"; matrix-unit peaks {describe_peaks(peak['matrix_gops'])} (a peer may multiply there)"
                    if peak.get("matrix_gops")
                    else ""
                )
            )
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
        f"interleaved rounds per kind: {summary.get('rounds')}; RSS: peak resident set of each peer's own "
        "process once loaded (load MB) and after its rounds (RSS MB)"
    )
    lines.append(
        f"{'peer':22} {'thr':>3} {'kind':6} {'single ms':>9} {'cpu ms':>7} {'%floor':>6} {'emb/s':>8} {'tok/s':>8} "
        f"{'tok/cpu-s':>9} {'%int8pk':>7} {'%fp32pk':>7} {'load MB':>7} {'RSS MB':>7}"
    )
    for r in summary["results"]:
        i8 = f"{100 * r['int8_peak_fraction']:6.1f}%" if r["int8_peak_fraction"] is not None else "      -"
        f32 = f"{100 * r['fp32_peak_fraction']:6.1f}%" if r["fp32_peak_fraction"] is not None else "      -"
        cpu_ms = f"{r['single_cpu_ms']:7.1f}" if r.get("single_cpu_ms") is not None else "      -"
        per_cpu = f"{r['tok_per_s'] * r['batch_s'] / r['batch_cpu_s']:9.0f}" if r.get("batch_cpu_s") else "        -"
        floor = f"{100 * r['floor_fraction']:5.1f}%" if r.get("floor_fraction") else "     -"
        rss = " ".join(f"{r[k]:7.0f}" if r.get(k) else "      -" for k in ("load_rss_mb", "peak_rss_mb"))
        lines.append(
            f"{r['peer']:22} {r['threads']:3} {r['kind']:6} {r['single_ms']:9.1f} {cpu_ms} {floor} "
            f"{r['emb_per_s']:8.1f} {r['tok_per_s']:8.0f} {per_cpu} {i8} {f32} {rss}"
        )
    for q in summary.get("scaling", []):
        lines.append(
            f"scaling {q['peer']:22} {q['kind']:6} 1 -> {q['threads']} threads: batch {_pair(q, 'batch_speedup')}"
        )
    lines.append(
        "ratios (embedpipe JIT / peer): batch throughput (>1 faster), single latency (<1 faster); "
        "of the medians, and [median of the per-round ratios]"
    )
    for q in summary["ratios"]:
        lines.append(
            f"  t={q['threads']} {q['kind']:6} vs {q['vs']:22} batch {_pair(q, 'batch_throughput_ratio')}  "
            f"single {_pair(q, 'single_latency_ratio')}"
            + (
                f"   per CPU-second: batch {_pair(q, 'batch_cpu_ratio')}  single {_pair(q, 'single_cpu_ratio')}"
                if "batch_cpu_ratio" in q
                else ""
            )
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


def _pair(q: dict, name: str) -> str:
    """``x1.23 [x1.20]``: the ratio of the medians and the median of the per-round ratios."""
    rounds = (q.get("rounds") or {}).get(name)
    return f"x{q[name]:.2f}" + (f" [x{rounds:.2f}]" if rounds is not None else "")
