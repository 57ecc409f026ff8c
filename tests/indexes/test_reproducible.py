"""--seed reproducibility: equal inputs and options give byte-identical files on any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes.query import build_from_dir

from .helpers import clustered

CASES = [
    ("brute", "fp32", {}),
    ("brute", "int8", {}),
    ("annoy", "fp32", {"n_trees": 4}),
    ("hnsw", "fp32", {"m": 8, "ef_construction": 40}),
    ("hnsw", "int8", {"m": 8, "ef_construction": 40}),
]


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("vec") / "vectors.npy"
    np.save(path, clustered(1500, 32, seed=21))
    return path


@pytest.mark.parametrize("kind,quant,params", CASES)
def test_same_seed_same_bytes_on_1_and_2_threads(npy, tmp_path, monkeypatch, kind, quant, params):
    files = []
    for threads in ("1", "2"):
        monkeypatch.setenv("EMBEDPIPE_THREADS", threads)
        out = tmp_path / f"{kind}-{threads}.idx"
        seed = {} if kind == "brute" else {"seed": 7}  # brute has nothing random
        build_from_dir(npy, out, kind, quant, **seed, **params)
        files.append(out.read_bytes())
    assert files[0] == files[1]


@pytest.mark.parametrize("kind,quant,params", [c for c in CASES if c[0] != "brute"])
def test_another_seed_gives_another_index(npy, tmp_path, kind, quant, params):
    a, b = tmp_path / "a", tmp_path / "b"
    build_from_dir(npy, a, kind, quant, seed=1, **params)
    build_from_dir(npy, b, kind, quant, seed=2, **params)
    assert a.read_bytes() != b.read_bytes()
