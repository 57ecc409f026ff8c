"""`search --threads N` reaches the index's kernels and the query model through the API
(`embedpipe.Index(threads=N)` → `codegen.threads.using_threads`), not the environment."""

from __future__ import annotations

import os

import numpy as np
import pytest

from embedpipe.cli.app import app
from embedpipe.cli.errors import run_cli
from embedpipe.codegen.threads import THREADS_ENV, default_threads, using_threads
from embedpipe.errors import ArgumentError
from embedpipe.indexes import build_index
from embedpipe.indexes.searcher import Index


@pytest.fixture()
def index_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.idx"
    build_index(rng.standard_normal((50, 16)).astype(np.float32), [f"d{i}" for i in range(50)]).save(path)
    np.save(tmp_path / "q.npy", rng.standard_normal((3, 16)).astype(np.float32))
    return path


def test_using_threads_is_scoped_and_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = default_threads()
    with using_threads(3):
        assert default_threads() == 3
        with using_threads(1):
            assert default_threads() == 1
        assert default_threads() == 3
    assert default_threads() == before and THREADS_ENV not in os.environ
    with pytest.raises(Exception, match="positive integer"):
        with using_threads(0):
            pass


def test_index_searches_with_its_thread_count(index_file, monkeypatch):
    seen: list[int] = []
    index = Index(index_file, threads=1)
    real = index.index.search_rows

    def spy(*args, **kwargs):
        seen.append(default_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(index.index, "search_rows", spy)
    hits = index.search_vectors(np.eye(16, dtype=np.float32)[:2], k=3)
    assert seen == [1] and [len(h) for h in hits] == [3, 3]
    with pytest.raises(ArgumentError, match="^threads must be a positive integer"):
        Index(index_file, threads=0)


def test_cli_threads_flag(index_file, capsys, monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    args = ["search", str(index_file), "--vectors", str(index_file.parent / "q.npy"), "-k", "2"]
    assert run_cli(app, [*args, "--threads", "1"]) == 0
    assert THREADS_ENV not in os.environ and "1." in capsys.readouterr().out
    assert run_cli(app, [*args, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
