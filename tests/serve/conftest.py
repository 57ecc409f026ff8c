"""A live server on a free loopback port, run in a thread of the test process.

The model is a tiny synthetic gemma-embedding GGUF of width 256, so Matryoshka 128 exists
and every forward pass takes milliseconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from embedpipe.runtime.embedder import Embedder
from embedpipe.serve.config import ModelSpec, ServeConfig

TINY_WIDE = dict(hidden=256, n_head=2, n_kv_head=1, head_dim=32, ffn=128, dense_out=256, context=96)
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict:
    """The test's environment with this checkout first on PYTHONPATH, for `python -m embedpipe`."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def spawn_server(model: Path, *args: str, env: dict | None = None, **popen) -> tuple[subprocess.Popen, str]:
    """`embedpipe serve --model tiny=MODEL` in a child process on a free port, once /ready says 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "embedpipe", "serve", "--model", f"tiny={model}", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env or cli_env(), **popen)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not come up")
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)


class LiveServer:
    """uvicorn serving `create_app(cfg)` on 127.0.0.1 in a background thread."""

    def __init__(self, cfg: ServeConfig, wait_ready: bool = True, graceful_s: float = 10):
        import uvicorn

        from embedpipe.serve.app import create_app

        cfg.host, cfg.port = "127.0.0.1", free_port()
        self.cfg = cfg
        self.app = create_app(cfg)
        self.state = self.app.state.server
        self.url = f"http://127.0.0.1:{cfg.port}"
        config = uvicorn.Config(
            self.app,
            host=cfg.host,
            port=cfg.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=graceful_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while httpx.get(self.url + "/ready").status_code != 200:
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.02)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                head, value = line.rsplit(" ", 1)
                if all(f'{k}="{v}"' in head for k, v in labels.items()):
                    total += float(value)
        return total

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory) -> Path:
    from synthetic import TinyConfig, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_wide"), cfg=TinyConfig(**TINY_WIDE), name="tiny-wide").path


@pytest.fixture(scope="session")
def wide_emb(wide_model) -> Embedder:
    return Embedder.load(wide_model, backend="auto")


def make_config(model: Path, tmp_path: Path, **kw) -> ServeConfig:
    kw.setdefault("backend", "auto")
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("access_log", False)
    return ServeConfig(models=[ModelSpec("tiny", str(model))], **kw)


@pytest.fixture(scope="module")
def server(wide_model, tmp_path_factory):
    live = LiveServer(make_config(wide_model, tmp_path_factory.mktemp("serve"), max_batch_tokens=512))
    yield live
    live.stop()
