"""A bounded soak: steady load for SOAK_S seconds, the server's RSS stays flat after warm-up."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from .conftest import cli_env, spawn_server

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("EMBEDPIPE_SOAK_SECONDS", "60"))
RSS_GROWTH_LIMIT = 16 << 20  # bytes between the first and the last third of the run


def test_rss_is_flat_under_steady_load(wide_model):
    proc, url = spawn_server(
        wide_model,
        "--no-access-log",
        "--cache-max-bytes",
        "2MB",
        stderr=subprocess.DEVNULL,
        env=cli_env(EMBEDPIPE_CACHE_DIR=str(wide_model.parent / "soak")),
    )
    try:
        stop = time.monotonic() + SOAK_S
        statuses: dict[int, int] = {}

        def client(seed: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                i = 0
                while time.monotonic() < stop:  # new texts (misses, cache churn) and repeats (hits)
                    texts = [f"soak text {seed} {i} {j} " + "bread flour " * (j % 7) for j in range(4)]
                    texts.append("a repeated text")
                    r = c.post("/v1/embeddings", json={"input": texts, "dimensions": 128})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    i += 1

        threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        server = psutil.Process(proc.pid)
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append(server.memory_info().rss)
            time.sleep(0.5)
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(60)
    assert set(statuses) == {200}, statuses
    third = max(1, len(samples) // 3)
    early, late = max(samples[third : 2 * third] or samples), max(samples[-third:])
    print(
        f"soak {SOAK_S:.0f} s: {sum(statuses.values())} requests, server RSS {samples[0] / 1e6:.1f} MB at start, "
        f"{early / 1e6:.1f} MB mid-run, {late / 1e6:.1f} MB in the last third"
    )
    assert late - early < RSS_GROWTH_LIMIT, (early, late)
