"""The servers `bench serve` drives: subprocesses speaking /v1/embeddings on loopback ports
(`embedpipe serve`, llama-cpp-python's server), each started, awaited and stopped here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedpipe.serve.bench import ServeBenchConfig

START_TIMEOUT_S = 300


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
                "embedpipe.serve.llama_cpp_launch",
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
