"""The closed-loop HTTP load of `bench serve`: `concurrency` clients on one server, and the
figures of one (server, text kind, concurrency) cell."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedpipe.serve.bench_peers import ServerPeer

if TYPE_CHECKING:
    from embedpipe.serve.bench import ServeBenchConfig


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


async def closed_loop(
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


def measure_cell(
    peer: ServerPeer, kind: str, concurrency: int, texts: list[str], cfg: ServeBenchConfig
) -> tuple[Cell, list[list[float]]]:
    before, cpu0 = peer.metrics(), peer.cpu_seconds()
    lat, errors, wall, vecs = asyncio.run(closed_loop(peer.url, peer.model_field, texts, concurrency, cfg.max_seconds))
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
