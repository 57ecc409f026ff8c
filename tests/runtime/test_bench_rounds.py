"""Interleaved rounds of `bench runtime` with fake peers: the order the peers run in, a failing
peer dropped mid-run, the per-round ratio medians, and the worker protocol (in process, and as
a foreign python with a fake sentence-transformers, as the torch venv runs it)."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from embedpipe.runtime import bench_rounds, bench_worker
from embedpipe.runtime.bench_peers import PeerUnavailable


class FakePeer:
    """Answers commands with made-up times and logs (peer, op, kind, start) to a shared list."""

    def __init__(self, name: str, log: list, fail_at: int | None = None):
        self.name, self.log, self.fail_at = name, log, fail_at

    def call(self, op: str, **args) -> dict:
        self.log.append((self.name, op, args.get("kind"), args.get("start")))
        if self.fail_at is not None and len([e for e in self.log if e[0] == self.name]) >= self.fail_at:
            raise PeerUnavailable("crashed")
        if op == "batch":
            return {"wall_s": 1.0, "cpu_s": 2.0}
        if op == "singles":
            return {"wall_s": [0.01] * args["count"], "cpu_s": [0.02] * args["count"]}
        return {}


def test_rounds_interleave_the_peers_kind_by_kind():
    log: list = []
    peers = {name: FakePeer(name, log) for name in ("a", "b", "c")}
    texts = {"short": ["s"] * 4, "long": ["l"] * 4}
    seen: list = []
    samples = bench_rounds.run_rounds(
        peers, texts, rounds=3, singles=5, on_failure=pytest.fail, on_round=lambda k, r, s: seen.append((k, r, list(s)))
    )
    abc = ("a", "b", "c")
    want = [(p, "texts", None, None) for p in abc]
    for kind in texts:
        want += [(p, "singles", kind, 0) for p in abc] + [(p, "batch", kind, None) for p in abc]  # warm-up
        for start in (0, 2, 4):  # 5 singles over 3 rounds: 2, 2, 1; the same texts for every peer
            want += [(p, "batch", kind, None) for p in abc] + [(p, "singles", kind, start) for p in abc]
    assert log == want
    assert seen == [(k, r, ["a", "b", "c"]) for k in texts for r in range(3)]
    assert set(samples) == {(p, k) for p in abc for k in texts}
    assert all([len(r.single_s) for r in s] == [2, 2, 1] for s in samples.values())


def test_singles_spread_evenly_over_the_rounds():
    assert bench_rounds.singles_per_round(10, 3) == [4, 3, 3]
    assert bench_rounds.singles_per_round(6, 3) == [2, 2, 2]
    assert bench_rounds.singles_per_round(1, 3) == [1, 1, 1]


def test_a_failing_peer_is_reported_and_dropped():
    log: list = []
    peers = {"a": FakePeer("a", log), "b": FakePeer("b", log, fail_at=5)}  # fails in its first round
    failures: list = []
    samples = bench_rounds.run_rounds(
        peers, {"short": ["s"]}, rounds=2, singles=2, on_failure=lambda p, why: failures.append((p, why))
    )
    assert failures == [("b", "crashed")]
    assert set(samples) == {("a", "short")} and len(samples["a", "short"]) == 2
    assert [e[1] for e in log if e[0] == "b"] == ["texts", "singles", "batch", "batch", "singles"]


def test_wait_idle_returns_once_the_cpu_counter_stops():
    readings = iter([0, 5, 9, 9, 9, 9, 9, 9, 9, 9, 9])
    seen = []

    def cpu():
        seen.append(next(readings, 9))
        return seen[-1]

    bench_rounds.wait_idle(cpu, quiet_s=0.004, limit_s=5.0, poll_s=0.001)
    assert seen[:3] == [0, 5, 9] and seen[-1] == 9
    bench_rounds.wait_idle(lambda: None)  # no counter on this system: no wait


def test_process_cpu_counts_this_process():
    assert bench_rounds.process_cpu_ns(os.getpid()) > 0
    assert bench_rounds.process_cpu_ns(2**22 + 12345) is None


def test_worker_protocol_in_process():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.ones((len(texts), 3), np.float32)

    w = bench_worker.Worker(encode, {"twice": lambda x: 2 * x})
    assert w.handle({"op": "texts", "texts": {"short": ["a", "b", "c"]}}) == {}
    assert set(w.handle({"op": "batch", "kind": "short"})) == {"wall_s", "cpu_s"}
    got = w.handle({"op": "singles", "kind": "short", "start": 2, "count": 3})
    assert len(got["wall_s"]) == len(got["cpu_s"]) == 3
    assert calls == [["a", "b", "c"], ["c"], ["a"], ["b"]]  # singles cycle through the texts
    assert w.handle({"op": "vectors", "texts": ["x"]}) == {"vectors": [[1.0, 1.0, 1.0]]}
    assert w.handle({"op": "extra", "name": "twice", "args": {"x": 4}}) == {"value": 8}
    assert "error" in w.handle({"op": "extra", "name": "nope"})
    assert w.handle({"op": "memory"})["memory_mb"]["peak_rss_mb"] > 0


FAKE_ST = """
import numpy as np
class SentenceTransformer:
    def __init__(self, path, device):
        assert device == "cpu"
    def encode(self, texts, batch_size, convert_to_numpy):
        return np.array([[len(t), 1.0] for t in texts], np.float32)
"""


def test_sentence_transformers_worker_runs_in_a_foreign_python(tmp_path, monkeypatch):
    """The worker's source runs in the torch python (here: this python with fake torch and
    sentence_transformers modules and nothing of embedpipe on its path)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("def set_num_threads(n):\n    assert n == 2\n")
    (fake / "sentence_transformers.py").write_text(FAKE_ST)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.chdir(tmp_path)
    cfg = SimpleNamespace(model="m.gguf", batch_size=4, max_tokens=64, st_python=sys.executable, st_model="ckpt")
    argv, env = bench_rounds.worker_command(bench_worker.ST_PEER, cfg, 2)
    assert argv[0] == sys.executable and argv[1] == "-c" and json.loads(argv[-1])["st_model"] == "ckpt"
    with bench_rounds.PeerProcess(bench_worker.ST_PEER, cfg, 2) as proc:
        assert proc.load_memory_mb["peak_rss_mb"] > 0
        proc.call("texts", texts={"short": ["ab", "abc"]})
        assert len(proc.call("singles", kind="short", start=0, count=3)["wall_s"]) == 3
        assert proc.call("vectors", texts=["abcd"])["vectors"] == [[4.0, 1.0]]
        with pytest.raises(PeerUnavailable, match="KeyError"):
            proc.call("batch", kind="long")


def test_a_peer_that_cannot_load_is_unavailable_with_its_reason(tmp_path):
    cfg = SimpleNamespace(model=str(tmp_path / "missing.gguf"), batch_size=4, max_tokens=64, onnx_dir=str(tmp_path))
    with pytest.raises(PeerUnavailable, match="model.int8.onnx is missing"):
        bench_rounds.PeerProcess("onnxruntime-int8", cfg, 1)
    with pytest.raises(PeerUnavailable, match="unknown peer"):
        bench_rounds.PeerProcess("nope", cfg, 1)
    not_a_program = tmp_path / "python"
    not_a_program.write_text("not a program")
    not_a_program.chmod(0o755)
    st = SimpleNamespace(**vars(cfg), st_python=str(not_a_program), st_model="ckpt")
    with pytest.raises(PeerUnavailable, match="cannot start"):
        bench_rounds.PeerProcess(bench_worker.ST_PEER, st, 1)
