"""The figures `embedpipe bench runtime` derives from its interleaved rounds: each peer's
medians (``PeerResult``), the JIT peer's ratios to every other peer, each peer's 1 -> N thread
speed-up, and how closely the peers' vectors agree.  Ratios and speed-ups come both from the
medians and as the median of the per-round figures (robust to the machine changing speed
during the run)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from embedpipe.runtime import bench_rounds


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
    # weight-streaming floor / single latency (1.0 = at the floor)
    floor_fraction: float | None = None
    # Peak resident set (VmHWM) of the peer's own worker process once it has loaded the model,
    # and after all its rounds (the peer alone: each peer runs in a process of its own)
    load_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    # The resident set after the rounds split into anonymous pages (the peer's own allocations:
    # weights it repacked or copied, activations) and file-backed ones (mapped model files)
    rss_anon_mb: float | None = None
    rss_file_mb: float | None = None
    # This peer's own figures per interleaved round (bench_rounds): batch_s, batch_cpu_s,
    # single_ms, single_cpu_ms; ``ratios`` pairs them with the JIT peer's round by round
    rounds: list[dict] = field(default_factory=list)


def peer_result(
    peer: str, threads: int, kind: str, samples: list[bench_rounds.RoundSample], texts: int, tokens: int
) -> PeerResult:
    """Medians over all rounds (today's columns) and each round's own figures (for the per-round
    ratios): batch wall and CPU seconds, single-text median ms and CPU ms."""
    rounds = [
        {
            "batch_s": r.batch_s,
            "emb_per_s": texts / r.batch_s,
            "batch_cpu_s": r.batch_cpu_s,
            "single_ms": 1e3 * statistics.median(r.single_s),
            "single_cpu_ms": 1e3 * statistics.median(r.single_cpu_s),
        }
        for r in samples
    ]
    batch = statistics.median(r.batch_s for r in samples)
    return PeerResult(
        peer,
        threads,
        kind,
        1e3 * statistics.median(s for r in samples for s in r.single_s),
        texts,
        batch,
        texts / batch,
        tokens / batch,
        1e3 * statistics.median(s for r in samples for s in r.single_cpu_s),
        statistics.median(r.batch_cpu_s for r in samples),
        rounds=rounds,
    )


def thread_scaling(results: list[dict]) -> list[dict]:
    """Batch throughput at the most threads over one thread, per peer and kind: of the medians
    and, under ``rounds``, the median of the per-round speed-ups (every thread count of a peer
    runs in the same interleaved rounds)."""
    index = {(r["peer"], r["threads"], r["kind"]): r for r in results}
    out = []
    for (peer, threads, kind), r in index.items():
        one = index.get((peer, 1, kind))
        if threads == 1 or one is None or threads != max(t for p, t, k in index if p == peer and k == kind):
            continue
        entry = {"peer": peer, "kind": kind, "threads": threads, "batch_speedup": r["emb_per_s"] / one["emb_per_s"]}
        paired = list(zip(one.get("rounds") or [], r.get("rounds") or []))
        if paired:
            entry["rounds"] = {
                "count": len(paired),
                "batch_speedup": statistics.median(b["emb_per_s"] / a["emb_per_s"] for a, b in paired),
            }
        out.append(entry)
    return out


def agreement(out: dict, vectors: dict[str, np.ndarray], threads: int) -> None:
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


#: Each ratio of the JIT peer to another: (name, figure of a result or round, JIT over peer?).
#: Throughput and per-CPU-second ratios are >1 when the JIT is faster, latencies <1.
RATIOS: tuple[tuple[str, str, bool], ...] = (
    ("batch_throughput_ratio", "emb_per_s", True),
    ("single_latency_ratio", "single_ms", True),
    ("batch_cpu_ratio", "batch_cpu_s", False),
    ("single_cpu_ratio", "single_cpu_ms", True),
)


def _ratio(ours: dict, theirs: dict, key: str, ours_over_theirs: bool) -> float | None:
    a, b = ours.get(key), theirs.get(key)
    if not a or not b:
        return None
    return a / b if ours_over_theirs else b / a


def ratios(results: list[dict]) -> list[dict]:
    """embedpipe JIT against every other peer at equal threads and document kind: batch
    throughput and per-CPU-second ratios (>1: JIT faster), single latency ratios (<1: JIT
    faster), from the two peers' medians and, under ``rounds``, as the median over the
    interleaved rounds of each round's ratio (rounds paired by position)."""
    index = {(r["peer"], r["threads"], r["kind"]): r for r in results}
    out = []
    for (peer, threads, kind), r in index.items():
        ours = index.get(("jit", threads, kind))
        if peer == "jit" or ours is None:
            continue
        entry: dict = {"threads": threads, "kind": kind, "vs": peer}
        for name, key, jit_over_peer in RATIOS:
            value = _ratio(ours, r, key, jit_over_peer)
            if value is not None:
                entry[name] = value
        paired = list(zip(ours.get("rounds") or [], r.get("rounds") or []))
        if paired:
            per_round = {"count": len(paired)}
            for name, key, jit_over_peer in RATIOS:
                values = [_ratio(a, b, key, jit_over_peer) for a, b in paired]
                if all(v is not None for v in values):
                    per_round[name] = statistics.median(values)
            entry["rounds"] = per_round
        out.append(entry)
    return out
