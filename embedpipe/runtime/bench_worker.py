"""One `bench runtime` peer in a process of its own, loaded once and driven one command at a
time, so the parent can interleave peers (A, B, C, A, B, C …) while each stays loaded.

Protocol: JSON lines. The worker answers its start with ``{"ready": …}`` (or ``{"error": …}``
when the peer cannot run here), then one answer line per command line:

- ``{"op": "texts", "texts": {kind: [text, …]}}``: the texts later commands name by kind;
- ``{"op": "batch", "kind": k}``: encode the kind's texts once: ``{"wall_s", "cpu_s"}``;
- ``{"op": "singles", "kind": k, "start": i, "count": n}``: encode texts i … i+n-1 (cycling)
  one call each: ``{"wall_s": […], "cpu_s": […]}``;
- ``{"op": "vectors", "texts": […]}``: ``{"vectors": [[…], …]}``;
- ``{"op": "memory"}``: the process's resident memory (``memory_mb``);
- ``{"op": "extra", "name": …, "args": {…}}``: a peer's own measurement (the JIT peer's
  native calls, FFN and op profile), whatever JSON it returns;
- ``{"op": "quit"}``.

CPU seconds are this process's (every thread of this peer and nothing else's). The module
imports only the standard library at top level: the sentence-transformers peer runs this very
file in the torch python (``python -c SOURCE``), which need not have embedpipe installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Iterable
from typing import TextIO

ST_PEER = "sentence-transformers"


def memory_mb() -> dict:
    """Peak and current resident set of this process, and the current split into anonymous
    (the peer's own allocations) and file-backed pages (mapped model files), MB (Linux)."""
    fields = {"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out: dict = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[fields[key]] = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if "peak_rss_mb" not in out:
        import resource

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _timed(fn, *args) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t, time.process_time() - c


class Worker:
    """Answers protocol commands with ``encode(texts) -> vectors`` and named extras."""

    def __init__(self, encode, extras: dict | None = None, note: str = ""):
        self.encode = encode
        self.extras = extras or {}
        self.note = note
        self.texts: dict[str, list[str]] = {}

    def handle(self, cmd: dict) -> dict:
        op = cmd.get("op")
        if op == "texts":
            self.texts = cmd["texts"]
            return {}
        if op == "batch":
            wall, cpu = _timed(self.encode, self.texts[cmd["kind"]])
            return {"wall_s": wall, "cpu_s": cpu}
        if op == "singles":
            texts = self.texts[cmd["kind"]]
            walls, cpus = [], []
            for i in range(cmd["start"], cmd["start"] + cmd["count"]):
                wall, cpu = _timed(self.encode, [texts[i % len(texts)]])
                walls.append(wall)
                cpus.append(cpu)
            return {"wall_s": walls, "cpu_s": cpus}
        if op == "vectors":
            return {"vectors": [[float(x) for x in row] for row in self.encode(cmd["texts"])]}
        if op == "memory":
            return {"memory_mb": memory_mb()}
        if op == "extra":
            if cmd["name"] not in self.extras:
                return {"error": f"this peer has no measurement {cmd['name']!r}"}
            return {"value": self.extras[cmd["name"]](**cmd.get("args", {}))}
        return {"error": f"unknown command {op!r}"}

    def serve(self, inp: Iterable[str], out: TextIO) -> None:
        for line in inp:
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                return
            try:
                reply = self.handle(cmd)
            except Exception as exc:  # reported to the parent, which skips the peer with it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc(file=sys.stderr)
            _send(out, reply)


def _send(out, reply: dict) -> None:
    out.write(json.dumps(reply) + "\n")
    out.flush()


def _sentence_transformers(cfg: dict, threads: int) -> Worker:
    """sentence-transformers fp32 on torch CPU (this file runs in the torch python)."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise _Unavailable(f"{sys.executable} cannot import sentence_transformers/torch: {exc}") from None
    torch.set_num_threads(threads)
    model = SentenceTransformer(cfg["st_model"], device="cpu")
    size = cfg["batch_size"]
    return Worker(lambda texts: model.encode(texts, batch_size=size, convert_to_numpy=True))


def _embedpipe_peer(name: str, cfg: dict, threads: int) -> Worker:
    """A peer of embedpipe.runtime.bench_peers, loaded in this process."""
    from types import SimpleNamespace

    from embedpipe.runtime import bench_peers

    try:
        peer = bench_peers.make_peer(name, SimpleNamespace(**cfg), threads)
    except bench_peers.PeerUnavailable as exc:
        raise _Unavailable(str(exc)) from None
    return Worker(peer.vectors, peer.extras(), peer.note)


class _Unavailable(Exception):
    pass


def main(argv: list[str]) -> int:
    """``worker PEER THREADS CONFIG_JSON``: load PEER, answer commands on stdin until quit."""
    name, threads, cfg = argv[1], int(argv[2]), json.loads(argv[3])
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    start = time.perf_counter()
    try:
        worker = _sentence_transformers(cfg, threads) if name == ST_PEER else _embedpipe_peer(name, cfg, threads)
    except _Unavailable as exc:
        _send(out, {"error": str(exc)})
        return 0
    except Exception as exc:  # a peer that fails to load is skipped with the reason
        traceback.print_exc(file=sys.stderr)
        _send(out, {"error": f"{name} failed to load: {type(exc).__name__}: {exc}"})
        return 0
    _send(out, {"ready": True, "load_s": time.perf_counter() - start, "memory_mb": memory_mb(), "note": worker.note})
    worker.serve(sys.stdin, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
