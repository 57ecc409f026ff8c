"""Interleaved measurement for `bench runtime`: every peer is loaded once, in a process of its
own (``bench_worker``), then rounds run the peers in turn, A, B, C, A, B, C …

On a shared VM whose speed swings from one minute to the next, peers timed one after the other
fall in different phases; peers timed within one round fall in the same one. So besides each
peer's medians over all rounds, the report pairs peers round by round and takes the median of
those per-round ratios (``bench_results.ratios``).

A round of a kind: every peer in turn encodes the kind's batch once, then every peer in turn
encodes the round's share of the single texts (the same texts for every peer) one call each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from embedpipe.runtime import bench_peers, bench_worker
from embedpipe.runtime.bench_peers import PeerUnavailable

if TYPE_CHECKING:
    from embedpipe.runtime.bench import BenchConfig

#: The configuration a worker needs to load its peer (the rest of BenchConfig stays here).
WORKER_CONFIG = ("model", "batch_size", "max_tokens", "st_python", "st_model", "onnx_dir")


class Commands(Protocol):
    """What the rounds need of a peer: one protocol command, its answer (``PeerProcess``)."""

    def call(self, op: str, **args: object) -> dict: ...


@dataclass
class RoundSample:
    """One peer's measurements of one kind in one round (seconds; CPU of the peer's process)."""

    batch_s: float
    batch_cpu_s: float
    single_s: list[float] = field(default_factory=list)
    single_cpu_s: list[float] = field(default_factory=list)


def singles_per_round(singles: int, rounds: int) -> list[int]:
    """The ``singles`` single texts spread over the rounds as evenly as they go (the first rounds
    take the remainder), at least one a round."""
    base, extra = divmod(singles, rounds)
    return [max(1, base + (r < extra)) for r in range(rounds)]


def run_rounds(
    peers: Mapping[Hashable, Commands],
    texts: Mapping[str, list[str]],
    rounds: int,
    singles: int,
    on_failure: Callable[[Hashable, str], None],
    on_round: Callable[[str, int, dict[Hashable, RoundSample]], None] | None = None,
) -> dict[tuple[Hashable, str], list[RoundSample]]:
    """Samples per (peer, kind), one per round, in the order of ``peers`` (whose keys may be
    anything: ``bench`` runs each peer at each thread count as its own participant). Each kind starts with an untimed warm-up
    (one single text, one batch) of every peer. A peer that fails is reported through
    ``on_failure(peer, why)`` and dropped from the rest of the run (its samples too);
    ``on_round(kind, round, samples by peer)`` sees each round as it ends."""
    live = dict(peers)
    samples: dict[tuple[Hashable, str], list[RoundSample]] = {}

    def each(op: str, **args) -> dict[Hashable, dict]:
        answers = {}
        for name, peer in list(live.items()):
            try:
                answers[name] = peer.call(op, **args)
            except PeerUnavailable as exc:
                del live[name]
                on_failure(name, str(exc))
        return answers

    each("texts", texts=dict(texts))
    counts = singles_per_round(singles, rounds)
    for kind in texts:
        each("singles", kind=kind, start=0, count=1)
        each("batch", kind=kind)
        for r in range(rounds):
            batches = each("batch", kind=kind)
            ones = each("singles", kind=kind, start=sum(counts[:r]), count=counts[r])
            this_round = {
                name: RoundSample(batches[name]["wall_s"], batches[name]["cpu_s"], **_singles(ones[name]))
                for name in live
            }
            for name, sample in this_round.items():
                samples.setdefault((name, kind), []).append(sample)
            if on_round:
                on_round(kind, r, this_round)
    return {key: value for key, value in samples.items() if key[0] in live}


def _singles(answer: dict) -> dict[str, list[float]]:
    return {"single_s": answer["wall_s"], "single_cpu_s": answer["cpu_s"]}


class PeerProcess:
    """A ``bench_worker`` process that has loaded one peer; ``call`` sends one command."""

    def __init__(self, name: str, cfg, threads: int):
        self.name = name
        argv, env = worker_command(name, cfg, threads)
        self._stderr = tempfile.TemporaryFile("w+")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
            )
        except OSError as exc:  # e.g. --st-python is not a program this machine runs
            self._stderr.close()
            raise PeerUnavailable(f"cannot start {argv[0]}: {exc}") from None
        hello = self._answer()
        if "error" in hello:
            self.close()
            raise PeerUnavailable(hello["error"])
        self.load_s: float = hello["load_s"]
        self.load_memory_mb: dict = hello["memory_mb"]
        self.note: str = hello.get("note", "")

    def call(self, op: str, **args: object) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # the worker is gone: _answer says why
        answer = self._answer()
        wait_idle(lambda: process_cpu_ns(self.proc.pid))
        if "error" in answer:
            raise PeerUnavailable(f"{op} failed: {answer['error']}")
        return answer

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self._stderr.seek(0)
            tail = self._stderr.read().strip()[-500:]
            raise PeerUnavailable(f"its worker process exited (status {code}): {tail or 'no output'}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_cpu_ns(pid: int) -> int | None:
    """CPU nanoseconds all threads of ``pid`` have run (Linux schedstat; None elsewhere)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def wait_idle(
    cpu_ns: Callable[[], int | None], quiet_s: float = 0.01, limit_s: float = 0.25, poll_s: float = 0.002
) -> None:
    """Return once a worker has used no CPU for ``quiet_s`` (at most ``limit_s``): thread pools
    spin for a while after answering (ONNX Runtime's intra-op threads do), and the next peer's
    measurement should not share the cores with that."""
    start = last_change = time.perf_counter()
    last = cpu_ns()
    while last is not None:
        time.sleep(poll_s)
        now, value = time.perf_counter(), cpu_ns()
        if value != last:
            last, last_change = value, now
        if now - last_change >= quiet_s or now - start >= limit_s:
            return


def worker_command(name: str, cfg: BenchConfig, threads: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the worker for ``name``; PeerUnavailable when it cannot start."""
    if name not in bench_peers.PEER_FACTORIES:
        raise PeerUnavailable(f"unknown peer {name!r}; known: {', '.join(bench_peers.PEER_FACTORIES)}")
    config = json.dumps({k: _plain(getattr(cfg, k, None)) for k in WORKER_CONFIG})
    if name == bench_worker.ST_PEER:  # the torch python runs the worker's source (no embedpipe there)
        python = bench_peers.SentenceTransformersPeer(cfg, threads).python
        source = Path(bench_worker.__file__).read_text()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        return [python, "-c", source, name, str(threads), config], env
    root = str(Path(__file__).resolve().parents[2])  # the tree this embedpipe is imported from
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    return [sys.executable, "-m", "embedpipe.runtime.bench_worker", name, str(threads), config], env


def _plain(value):
    return str(value) if isinstance(value, os.PathLike) else value
