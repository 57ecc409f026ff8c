"""Many clients at once: each gets its own vectors, in order, from shared forward passes;
a flood beyond the queue gets 429 + Retry-After, never a 5xx. Loops are bounded in count and time."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from .conftest import LiveServer, make_config

WORDS = "bread flour water salt yeast vector index parquet stream fox dog lazy quick brown".split()
CLIENT_TIMEOUT_S = 60
ROUNDS = 2  # requests per client


def mixed_texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 20)))) + f" #{seed}.{i}" for i in range(n)]


async def embed(client: httpx.AsyncClient, texts: list[str]) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})


def test_64_concurrent_clients_get_their_own_vectors(server, wide_emb):
    batches_before = server.metric("embedpipe_requests_per_pass_count")
    requests = [mixed_texts(seed, 1 + seed % 5) for seed in range(64 * ROUNDS)]

    async def client_loop(client: httpx.AsyncClient, mine: list[list[str]]) -> list[httpx.Response]:
        return [await embed(client, texts) for texts in mine]

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=CLIENT_TIMEOUT_S) as client:
            per_client = [requests[i::64] for i in range(64)]
            results = await asyncio.wait_for(
                asyncio.gather(*(client_loop(client, mine) for mine in per_client)), CLIENT_TIMEOUT_S
            )
        return [r for i in range(ROUNDS) for r in (res[i] for res in results)], [
            m for i in range(ROUNDS) for m in (pc[i] for pc in per_client)
        ]

    responses, sent = asyncio.run(main())
    for resp, texts in zip(responses, sent):
        assert resp.status_code == 200, resp.text
        got = np.array([d["embedding"] for d in resp.json()["data"]], np.float32)
        want = wide_emb.encode(texts, task="query", truncate=True)
        assert got.shape == want.shape and float((got * want).sum(1).min()) >= 0.99999
    passes = server.metric("embedpipe_requests_per_pass_count") - batches_before
    merged = server.metric("embedpipe_requests_per_pass_bucket", le="1.0")
    total = server.metric("embedpipe_requests_per_pass_count")
    assert passes > 0 and total - merged > 0, "no forward pass carried more than one request"
    assert server.metric("embedpipe_requests_total", status="500") == 0


@pytest.fixture(scope="module")
def small_queue(wide_model, tmp_path_factory):
    cfg = make_config(
        wide_model, tmp_path_factory.mktemp("flood"), max_batch_tokens=128, max_queue_tokens=600, cache=False
    )
    live = LiveServer(cfg)
    yield live
    live.stop()


def test_flood_beyond_the_queue_gets_429_not_500(small_queue, wide_emb):
    bodies = [mixed_texts(1000 + i, 6) for i in range(120)]

    async def main():
        async with httpx.AsyncClient(
            base_url=small_queue.url, limits=httpx.Limits(max_connections=120), timeout=CLIENT_TIMEOUT_S
        ) as client:
            return await asyncio.wait_for(asyncio.gather(*(embed(client, b) for b in bodies)), CLIENT_TIMEOUT_S)

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(429) > 0 and codes.count(200) > 0
    for resp, texts in zip(responses, bodies):
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["error"]["type"] == "rate_limit_error"
        else:
            got = np.array([d["embedding"] for d in resp.json()["data"]], np.float32)
            assert float((got * wide_emb.encode(texts, task="query", truncate=True)).sum(1).min()) >= 0.99999
    assert small_queue.metric("embedpipe_rejected_requests_total") == codes.count(429)
    assert small_queue.metric("embedpipe_queued_tokens") == 0  # nothing left behind


def test_disconnected_client_drops_its_queued_work(small_queue):
    """A client that gives up while its request is queued: its sequences never reach the model."""
    import threading
    import time

    batcher = small_queue.state.catalog.models["tiny"].aemb.batcher
    real, started, gate, seen = batcher.embed, threading.Event(), threading.Event(), []

    def held(seqs):  # every pass waits until the test lets it go
        started.set()
        assert gate.wait(CLIENT_TIMEOUT_S)
        seen.extend(tuple(s) for s in seqs)
        return real(seqs)

    batcher.embed = held
    try:

        async def main():
            async with (
                httpx.AsyncClient(base_url=small_queue.url, timeout=CLIENT_TIMEOUT_S) as patient,
                httpx.AsyncClient(base_url=small_queue.url, timeout=httpx.Timeout(10, read=0.3)) as impatient,
            ):
                first = asyncio.ensure_future(embed(patient, ["holds the model"]))
                deadline = time.monotonic() + 10
                while not started.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                with pytest.raises(httpx.ReadTimeout):
                    await embed(impatient, ["gives up waiting", "for its answer"])
                while batcher.queued_tokens and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert batcher.queued_tokens == 0 and batcher.queued_requests == 0
                gate.set()
                return await first

        assert asyncio.run(main()).status_code == 200
    finally:
        gate.set()
        batcher.embed = real
    tok = small_queue.state.catalog.models["tiny"].embedder
    dropped = {tuple(s) for s in tok.tokenize(["gives up waiting", "for its answer"], task="query")}
    assert seen and not dropped & set(seen)
