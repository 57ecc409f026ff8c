"""/ready before and after loading; SIGTERM during load finishes every accepted request, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from embedpipe.serve.catalog import Catalog

from .conftest import READY_TIMEOUT_S, LiveServer, cli_env, free_port, make_config, spawn_server


def test_ready_only_after_models_are_loaded(wide_model, tmp_path, monkeypatch):
    release = threading.Event()
    real = Catalog.load_all

    def slow_load(self, *args, **kw):
        assert release.wait(READY_TIMEOUT_S)
        return real(self, *args, **kw)

    monkeypatch.setattr(Catalog, "load_all", slow_load)
    live = LiveServer(make_config(wide_model, tmp_path), wait_ready=False)
    try:
        assert httpx.get(live.url + "/health").json() == {"status": "ok"}
        ready = httpx.get(live.url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        early = httpx.post(live.url + "/v1/embeddings", json={"input": "too early"})
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        assert live.metric("embedpipe_ready") == 0
        release.set()
        live.wait_ready()
        assert httpx.get(live.url + "/ready").json()["models"] == ["tiny"]
        assert httpx.post(live.url + "/v1/embeddings", json={"input": "now"}).status_code == 200
        assert live.metric("embedpipe_ready") == 1 and live.metric("embedpipe_model_load_seconds") > 0
    finally:
        release.set()
        live.stop()


def test_without_a_model_the_registrys_default_is_served(wide_model, tmp_path, monkeypatch):
    from embedpipe.runtime import registry
    from embedpipe.serve.config import ServeConfig

    asked = []
    monkeypatch.setattr(registry, "resolve_model", lambda model: asked.append(model) or wide_model)
    cfg = make_config(wide_model, tmp_path)
    cfg = ServeConfig(**{**vars(cfg), "models": []}).validate()
    live = LiveServer(cfg)
    try:
        assert asked[0] is None
        assert httpx.get(live.url + "/ready").json()["models"] == [wide_model.name.removesuffix(".gguf")]
        assert httpx.post(live.url + "/v1/embeddings", json={"input": "default"}).status_code == 200
    finally:
        live.stop()


def test_a_registered_name_is_served_under_that_name(wide_model, tmp_path, monkeypatch):
    from embedpipe.runtime import registry
    from embedpipe.serve.config import ModelSpec, ServeConfig

    asked = []
    monkeypatch.setattr(registry, "resolve_model", lambda model: asked.append(model) or wide_model)
    cfg = make_config(wide_model, tmp_path)
    cfg = ServeConfig(**{**vars(cfg), "models": [ModelSpec.parse("tiny-bert:f32")]}).validate()
    live = LiveServer(cfg)
    try:
        assert "tiny-bert:f32" in asked
        assert httpx.get(live.url + "/ready").json()["models"] == ["tiny-bert-f32"]
        body = {"input": "named", "model": "tiny-bert-f32"}
        assert httpx.post(live.url + "/v1/embeddings", json=body).status_code == 200
        # the file's own name (what `model path` prints) answers too, with a task alias as well,
        # but only the served name is listed
        stem = wide_model.name.removesuffix(".gguf")
        for field in (stem, f"{stem}:document"):
            got = httpx.post(live.url + "/v1/embeddings", json={"input": "named", "model": field})
            assert got.status_code == 200 and got.json()["model"] == field
        assert [m["id"] for m in httpx.get(live.url + "/v1/models").json()["data"]] == ["tiny-bert-f32"]
    finally:
        live.stop()


def test_served_names(tmp_path, monkeypatch):
    from embedpipe.runtime import registry, store
    from embedpipe.serve.catalog import served_name

    assert served_name(None, "/cache/embeddinggemma-300m-q8_0.gguf") == "embeddinggemma-300m-q8_0"
    # a file of the model store is named as its registered spelling names it, however it was found
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    spec = registry.lookup("all-minilm-l6-v2").spec
    for quant, want in [("q8_0", "all-minilm-l6-v2"), ("f32", "all-minilm-l6-v2-f32")]:
        assert served_name(None, str(store.gguf_path(quant, spec))) == want
    assert served_name("all-minilm-l6-v2", "/cache/all-minilm-l6-v2-q8_0.gguf") == "all-minilm-l6-v2"
    assert served_name("all-minilm-l6-v2:f32", "/cache/all-minilm-l6-v2-f32.gguf") == "all-minilm-l6-v2-f32"
    assert served_name(__file__, __file__) == Path(__file__).name  # a file is named by its file


def test_a_bug_while_loading_stops_the_server_instead_of_leaving_it_loading(wide_model, tmp_path, monkeypatch):
    def broken_load(self, *args, **kw):
        raise ImportError("cannot import name 'gone'")

    monkeypatch.setattr(Catalog, "load_all", broken_load)
    live = LiveServer(make_config(wide_model, tmp_path), wait_ready=False)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while live.state.load_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live.state.load_error == "ImportError: cannot import name 'gone'" and not live.state.ready
        ready = httpx.get(live.url + "/ready")
        assert ready.status_code == 503 and ready.json()["error"] == live.state.load_error
    finally:
        live.stop()


def test_failed_load_is_reported_and_stops_the_server(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe", "serve", "--model", str(bad), "--port", str(free_port()), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_sigterm_during_load_loses_no_accepted_request(wide_model, wide_emb, tmp_path):
    proc, url = spawn_server(
        wide_model,
        "--no-cache",
        "--max-batch-tokens",
        "256",
        "--max-queue-tokens",
        "100000",
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        texts = [" ".join(["bread flour water salt"] * (1 + i % 8)) + f" {i}" for i in range(24)]
        want = wide_emb.encode(texts, task="query", truncate=True)
        outcomes: list[tuple[str, float]] = []
        wrong: list[str] = []
        stop_at = time.monotonic() + 30

        def client() -> None:
            # one connection per request, so "accepted" means this request reached the server
            with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
                while time.monotonic() < stop_at:
                    try:
                        r = c.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})
                    except httpx.ConnectError:
                        outcomes.append(("refused", time.monotonic()))
                        return
                    except httpx.TransportError as exc:
                        outcomes.append((f"dropped: {exc!r}", time.monotonic()))
                        return
                    if r.status_code != 200:
                        wrong.append(f"{r.status_code} {r.text[:200]}")
                        return
                    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
                    if float((got * want).sum(1).min()) < 0.99999:
                        wrong.append("wrong vectors")
                    outcomes.append(("ok", time.monotonic()))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        while sum(1 for o, _ in outcomes if o == "ok") < 16 and time.monotonic() < stop_at:
            time.sleep(0.01)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = proc.wait(60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, stderr[-2000:]
    assert not wrong, wrong
    ok = [t for o, t in outcomes if o == "ok"]
    logged = [json.loads(line.split(": ", 1)[1]) for line in stderr.splitlines() if "embedpipe.serve.access:" in line]
    answered = [e for e in logged if e["path"] == "/v1/embeddings"]
    # every request the server accepted was answered 200 and reached its client
    assert all(e["status"] == 200 for e in answered), [e for e in answered if e["status"] != 200]
    assert len(answered) == len(ok), (len(answered), len(ok), outcomes[-10:])
    assert any(t > killed_at for t in ok), "no request was in flight at SIGTERM"
    assert "stopped:" in stderr


def test_a_request_cut_off_by_the_shutdown_timeout_gets_a_json_503(wide_model, tmp_path):
    """uvicorn cancels it; that used to surface as its text/plain 500 and a logged traceback."""
    live = LiveServer(make_config(wide_model, tmp_path, access_log=True), graceful_s=0.5)
    started = threading.Event()

    async def stuck(*args, **kwargs):
        started.set()
        await asyncio.sleep(60)

    live.state.embeddings.embed_texts = stuck
    result: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: result.append(httpx.post(live.url + "/v1/embeddings", json={"input": "x"}, timeout=30))
    )
    client.start()
    assert started.wait(10)
    live.stop()
    client.join(30)
    (resp,) = result
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "shutting_down"
    assert live.state.completed == live.state.accepted
