"""`embedpipe bench serve`: HTTP embedding throughput and latency under concurrent load.

A bounded closed-loop load generator on loopback (asyncio + httpx: `concurrency` clients, one
text per request, a fixed number of requests, a time cap) runs against, in the same run:
`embedpipe serve` (a subprocess, cache off), llama.cpp's server from llama-cpp-python
(`python -m llama_cpp.server`, same GGUF, same threads) and in-process `Embedder.encode` on
the same texts (the ceiling: no HTTP, no scheduling). Every peer sees the same prompt-formatted
texts (our server with the `NAME:none` alias, so it adds no second prompt). Peers that cannot
run here are reported as skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from embedpipe.runtime import prompts
from embedpipe.runtime.bench import machine_info
from embedpipe.runtime.bench_texts import documents

KINDS: tuple[str, ...] = ("short", "long")
CONCURRENCY: tuple[int, ...] = (1, 8, 32)
PEERS: tuple[str, ...] = ("embedpipe", "llama.cpp")
START_TIMEOUT_S = 300
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
class Cell:
    peer: str
    kind: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    emb_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_emb: float | None = None  # server process CPU time (all threads) per embedding
    requests_per_pass: float | None = None  # embedpipe only: mean requests merged into a pass
    sequences_per_pass: float | None = None


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerPeer:
    """A server subprocess speaking /v1/embeddings on a loopback port."""

    name = "server"

    def __init__(self, cmd: list[str], port: int, model_field: str):
        self.port, self.model_field = port, model_field
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_up(self, path: str) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} while starting")
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up in {START_TIMEOUT_S} s")

    def metrics(self) -> dict[str, float]:
        return {}

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (None without psutil)."""
        try:
            import psutil
        except ImportError:
            return None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class EmbedpipeServer(ServerPeer):
    name = "embedpipe"

    def __init__(self, cfg: ServeBenchConfig):
        port = free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "embedpipe",
                "serve",
                "--model",
                f"bench={cfg.model}",
                "--port",
                str(port),
                "--threads",
                str(cfg.threads),
                "--no-cache",
                "--no-access-log",
                "--max-batch-tokens",
                str(cfg.max_batch_tokens),
                "--max-queue-tokens",
                str(64 * cfg.max_batch_tokens),
            ],
            port,
            "bench:none",
        )
        self.wait_up("/ready")

    def metrics(self) -> dict[str, float]:
        import httpx

        out: dict[str, float] = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            for name in ("embedpipe_requests_per_pass", "embedpipe_sequences_per_pass"):
                for suffix in ("_sum", "_count"):
                    if line.startswith(name + suffix + "{"):
                        out[name + suffix] = out.get(name + suffix, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


class LlamaCppServer(ServerPeer):
    name = "llama.cpp"

    def __init__(self, cfg: ServeBenchConfig):
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"llama-cpp-python's server is not importable ({exc}); pip install 'llama-cpp-python[server]'"
            ) from None
        port = free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                cfg.model,
                "--embedding",
                "true",
                "--n_threads",
                str(cfg.threads),
                "--n_threads_batch",
                str(cfg.threads),
                "--n_ctx",
                "2048",
                "--n_batch",
                "2048",
                "--n_ubatch",
                "2048",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            port,
            "bench",
        )
        self.wait_up("/v1/models")


PEER_SERVERS: dict[str, Callable[[ServeBenchConfig], ServerPeer]] = {
    "embedpipe": EmbedpipeServer,
    "llama.cpp": LlamaCppServer,
}


async def _load(
    url: str, model: str, texts: list[str], concurrency: int, max_seconds: float
) -> tuple[list[float], int, float, list[list[float]]]:
    """Closed loop: `concurrency` clients take the next text until all are sent or time is up."""
    import httpx

    latencies: list[float] = []
    errors = 0
    first_vectors: list[list[float]] = []
    cursor = iter(range(len(texts)))
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in cursor:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/embeddings", json={"model": model, "input": texts[i]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if i < 4:
                first_vectors.append((i, r.json()["data"][0]["embedding"]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=max_seconds) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall, [v for _, v in sorted(first_vectors)]


def _cell(
    peer: ServerPeer, kind: str, concurrency: int, texts: list[str], cfg: ServeBenchConfig
) -> tuple[Cell, list[list[float]]]:
    before, cpu0 = peer.metrics(), peer.cpu_seconds()
    lat, errors, wall, vecs = asyncio.run(_load(peer.url, peer.model_field, texts, concurrency, cfg.max_seconds))
    after, cpu1 = peer.metrics(), peer.cpu_seconds()
    ms = sorted(1e3 * x for x in lat) or [float("nan")]
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    cell = Cell(
        peer.name,
        kind,
        concurrency,
        len(lat),
        errors,
        wall,
        len(lat) / wall,
        len(lat) / wall,
        statistics.median(ms),
        pick(0.95),
        pick(0.99),
    )
    if cpu0 is not None and lat:
        cell.cpu_ms_per_emb = 1e3 * (cpu1 - cpu0) / len(lat)
    if after:
        n = after.get("embedpipe_requests_per_pass_count", 0) - before.get("embedpipe_requests_per_pass_count", 0)
        if n:
            cell.requests_per_pass = (
                after["embedpipe_requests_per_pass_sum"] - before.get("embedpipe_requests_per_pass_sum", 0)
            ) / n
            cell.sequences_per_pass = (
                after["embedpipe_sequences_per_pass_sum"] - before.get("embedpipe_sequences_per_pass_sum", 0)
            ) / n
    return cell, vecs


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
    summary = Summary(machine_info(), cfg.model, cfg.threads)
    n = max(cfg.requests, 4 * max(cfg.concurrency))
    texts = {kind: prompts.format_texts(documents(kind, n), TASK) for kind in cfg.kinds}
    peers: list[ServerPeer] = []
    try:
        for name in cfg.peers:
            try:
                if name not in PEER_SERVERS:
                    raise RuntimeError(f"unknown server; known: {', '.join(PEER_SERVERS)}")
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
                    cell, vecs = _cell(peer, kind, conc, texts[kind], cfg)
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
    asyncio.run(_load(peer.url, peer.model_field, texts, 1, 60))


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
