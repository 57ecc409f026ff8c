"""`embedpipe bench serve`: HTTP embedding throughput and latency under concurrent load.

A bounded closed-loop load generator on loopback (asyncio + httpx: `concurrency` clients, one
text per request, a fixed number of requests, a time cap) runs against, in the same run:
`embedpipe serve` (a subprocess, cache off), llama.cpp's server from llama-cpp-python
(`python -m llama_cpp.server` via `llama_cpp_launch`, same GGUF, same threads) and in-process `Embedder.encode` on
the same texts (the ceiling: no HTTP, no scheduling). Every peer sees the same prompt-formatted
texts (our server with the `NAME:none` alias, so it adds no second prompt). Peers that cannot
run here are reported as skipped with the reason.

The servers are started by `bench_peers`, the load is generated and measured by `bench_load`;
this module runs the grid, the in-process ceiling and the report.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.runtime import prompts
from embedpipe.runtime.bench import KINDS as DOCUMENT_KINDS
from embedpipe.runtime.bench import machine_info
from embedpipe.runtime.bench_peers import check_peer_names
from embedpipe.runtime.bench_texts import documents
from embedpipe.serve.bench_load import Cell, closed_loop, measure_cell
from embedpipe.serve.bench_peers import PEER_SERVERS, ServerPeer

KINDS: tuple[str, ...] = ("short", "long")
CONCURRENCY: tuple[int, ...] = (1, 8, 32)
PEERS: tuple[str, ...] = ("embedpipe", "llama.cpp")
TASK = "query"


@dataclass
class ServeBenchConfig:
    model: str
    threads: int
    kinds: tuple[str, ...] = KINDS
    concurrency: tuple[int, ...] = CONCURRENCY
    peers: tuple[str, ...] = PEERS
    requests: int = 256  # per cell (peer, kind, concurrency); at least 4 per client
    max_seconds: float = 120.0  # per cell
    max_batch_tokens: int = 16384


@dataclass
class Summary:
    machine: dict
    model: str
    threads: int
    cells: list[Cell] = field(default_factory=list)
    ceiling: dict = field(default_factory=dict)  # kind -> in-process encode figures
    ratios: list[dict] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)


def check_serve_config(cfg: ServeBenchConfig) -> None:
    """Refuse a config that would measure nothing: a mistyped server (a known one that cannot
    run here is skipped later, with its reason, as in `bench runtime`), an unknown text kind,
    or a count or time cap that leaves no requests to time."""
    check_peer_names(cfg.peers, PEER_SERVERS)
    bad = [kind for kind in cfg.kinds if kind not in DOCUMENT_KINDS]
    if bad:
        raise EmbedpipeError(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(DOCUMENT_KINDS)}")
    if any(c < 1 for c in cfg.concurrency):
        raise ArgumentError("concurrency", f"must be >= 1, got {', '.join(map(str, cfg.concurrency))}")
    for name in ("threads", "requests"):
        if getattr(cfg, name) < 1:
            raise ArgumentError(name, f"must be >= 1, got {getattr(cfg, name)}")
    if not cfg.max_seconds > 0:
        raise ArgumentError("max_seconds", f"must be positive, got {cfg.max_seconds}")


class Ceiling:
    """In-process Embedder.encode on the same texts: batch throughput and single-text latency."""

    def __init__(self, cfg: ServeBenchConfig):
        from embedpipe.runtime.embedder import Embedder

        self.emb = Embedder.load(cfg.model, threads=cfg.threads)

    def measure(self, items: list[str]) -> tuple[dict, np.ndarray]:
        emb = self.emb
        emb.encode(items[:8], task="none")
        t0, c0 = time.perf_counter(), time.process_time()
        emb.encode(items, task="none", batch_size=32)
        batch_s, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
        singles = []
        for text in items[:20]:
            t1 = time.perf_counter()
            emb.encode([text], task="none")
            singles.append(time.perf_counter() - t1)
        figures = {
            "emb_per_s": len(items) / batch_s,
            "single_p50_ms": 1e3 * statistics.median(singles),
            "cpu_ms_per_emb": 1e3 * batch_cpu / len(items),
            "texts": len(items),
        }
        return figures, emb.encode(items[:4], task="none")


def run_serve_bench(cfg: ServeBenchConfig, report: Callable[[str], None] = print) -> dict:
    """Every server is started first; then per kind the in-process ceiling and, per concurrency,
    each server in turn, so the figures compared were taken minutes apart at most."""
    check_serve_config(cfg)
    summary = Summary(machine_info(), cfg.model, cfg.threads)
    n = max(cfg.requests, 4 * max(cfg.concurrency))
    texts = {kind: prompts.format_texts(documents(kind, n), TASK) for kind in cfg.kinds}
    peers: list[ServerPeer] = []
    try:
        for name in cfg.peers:
            try:
                peers.append(PEER_SERVERS[name](cfg))
            except (RuntimeError, OSError) as exc:
                summary.skipped[name] = str(exc)
                report(f"skipped {name}: {exc}")
        ceiling = Ceiling(cfg)
        for kind in cfg.kinds:
            summary.ceiling[kind], ref = ceiling.measure(texts[kind])
            c = summary.ceiling[kind]
            report(f"in-process encode {kind}: {c['emb_per_s']:.1f} emb/s, single p50 {c['single_p50_ms']:.1f} ms")
            for conc in cfg.concurrency:
                for peer in peers:
                    _load_warmup(peer, texts[kind][:2])
                    cell, vecs = measure_cell(peer, kind, conc, texts[kind], cfg)
                    summary.cells.append(cell)
                    report(format_cell(asdict(cell)))
                    if vecs and kind not in summary.agreement.get(peer.name, {}):
                        got = np.asarray(vecs, np.float32)
                        got /= np.linalg.norm(got, axis=1, keepdims=True)
                        cos = float((got * ref[: len(got)]).sum(1).min())
                        summary.agreement.setdefault(peer.name, {})[kind] = round(cos, 5)
    finally:
        for peer in peers:
            peer.close()
    summary.machine["load_avg_end"] = list(os.getloadavg())
    summary.ratios = _ratios(summary)
    return asdict(summary)


def _load_warmup(peer: ServerPeer, texts: list[str]) -> None:
    asyncio.run(closed_loop(peer.url, peer.model_field, texts, 1, 60))


def _ratios(summary: Summary) -> list[dict]:
    cells = {(c.peer, c.kind, c.concurrency): c for c in summary.cells}
    out = []
    for (peer, kind, conc), ours in cells.items():
        if peer != "embedpipe":
            continue
        row = {"kind": kind, "concurrency": conc}
        other = cells.get(("llama.cpp", kind, conc))
        if other and other.emb_per_s:
            row["vs_llama_cpp_throughput"] = round(ours.emb_per_s / other.emb_per_s, 2)
            row["vs_llama_cpp_p50"] = round(ours.p50_ms / other.p50_ms, 2)
        ceiling = summary.ceiling.get(kind)
        if ceiling:
            row["of_in_process_encode"] = round(ours.emb_per_s / ceiling["emb_per_s"], 2)
            if ours.cpu_ms_per_emb:
                row["of_in_process_encode_per_cpu_s"] = round(ceiling["cpu_ms_per_emb"] / ours.cpu_ms_per_emb, 2)
        if other and other.cpu_ms_per_emb and ours.cpu_ms_per_emb:
            row["vs_llama_cpp_per_cpu_s"] = round(other.cpu_ms_per_emb / ours.cpu_ms_per_emb, 2)
        out.append(row)
    return out


def format_cell(c: dict) -> str:
    rpp = f"{c['requests_per_pass']:.1f}/{c['sequences_per_pass']:.1f}" if c.get("requests_per_pass") else "-"
    cpu = f"{c['cpu_ms_per_emb']:6.1f}" if c.get("cpu_ms_per_emb") is not None else "     -"
    return (
        f"{c['peer']:10} {c['kind']:6} c={c['concurrency']:<3} {c['requests']:5} req {c['errors']:3} err "
        f"{c['req_per_s']:8.1f} req/s {c['emb_per_s']:8.1f} emb/s  p50 {c['p50_ms']:7.1f}  p95 {c['p95_ms']:7.1f}  "
        f"p99 {c['p99_ms']:7.1f} ms  cpu {cpu} ms/emb  req/seq per pass {rpp}"
    )


def format_summary(s: dict) -> list[str]:
    m = s["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), load {m['load_avg']} at start, {m.get('load_avg_end')} at end; "
        f"model {s['model']}, threads {s['threads']}"
    ]
    lines += [format_cell(c) for c in s["cells"]]
    for kind, c in s["ceiling"].items():
        cpu = f", cpu {c['cpu_ms_per_emb']:.1f} ms/emb" if c.get("cpu_ms_per_emb") is not None else ""
        lines.append(
            f"in-process encode {kind}: {c['emb_per_s']:.1f} emb/s, single p50 {c['single_p50_ms']:.1f} ms{cpu}"
        )
    for r in s["ratios"]:
        parts = [f"{k} x{v}" for k, v in r.items() if k not in ("kind", "concurrency")]
        lines.append(f"ratios {r['kind']} c={r['concurrency']}: " + ", ".join(parts))
    for peer, kinds in s["agreement"].items():
        lines.append(f"agreement {peer} vs encode: " + ", ".join(f"{k} min cos {v}" for k, v in kinds.items()))
    for name, why in s["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return lines
