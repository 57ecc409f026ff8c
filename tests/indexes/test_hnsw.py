"""HNSW: JIT kernels against the numpy reference, graph invariants, incremental add."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes import build_index, load_index
from embedpipe.indexes.hnsw_kernel import HnswKernel

from .helpers import clustered, exact_topk, recall


@pytest.mark.parametrize("quant,mode", [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_kernel_search_matches_numpy_reference(quant, mode):
    x, q = clustered(1500, 48, seed=1), clustered(30, 48, seed=2)
    ix = build_index(x, kind="hnsw", quant=quant, m=8, ef_construction=60, scale_mode=mode)
    kern = HnswKernel.for_index(ix)
    assert kern is not None, "HNSW JIT kernel failed to compile on this host"
    qn = ix.prepare_queries(q)
    s_k, r_k = kern.search(qn, 10, 40)
    s_r, r_r = ix.search_reference(qn, 10, 40)
    assert recall(r_k, r_r) >= 0.97  # same beam search; only tie order may differ
    np.testing.assert_allclose(s_k[:, 0], s_r[:, 0], rtol=1e-4, atol=1e-5)


def test_graph_invariants():
    x = clustered(1200, 32, seed=6)
    ix = build_index(x, kind="hnsw", m=8)
    assert ix.nbr0.shape == (1200, 16) and ix.nbru.shape[1] == 8
    rows = np.arange(1200)[:, None]
    assert not ((ix.nbr0 == rows) & (ix.nbr0 >= 0)).any()  # no self loops
    assert (ix.nbr0[:, 0] >= 0).all()  # everyone has a neighbour
    assert int(ix.level[ix.entry]) == int(ix.level.max())
    upper = np.flatnonzero(ix.level >= 1)
    for u in upper[:50]:
        assert set(ix.upper(u, 1).tolist()) <= set(upper.tolist())


def test_incremental_add_is_searchable(tmp_path):
    x = clustered(900, 32, seed=7)
    ix = build_index(x[:600], kind="hnsw", m=8, ef_construction=64)
    ix.add(x[600:])
    assert ix.count == 900
    _, ids = ix.search(x[600:] + 0.0, 1)
    assert (ids[:, 0] == np.arange(600, 900)).mean() >= 0.98
    q = clustered(40, 32, seed=8)
    assert recall(ix.search(q, 10)[1], exact_topk(x, q, 10)) >= 0.93
    ix.save(tmp_path / "h")
    assert load_index(tmp_path / "h").count == 900


def test_graph_pointing_outside_is_rejected(tmp_path):
    """Layer-0 ids are checked where the search follows them (ef = n expands every node)."""
    from embedpipe.indexes.format import IndexFileError, read_container, write_container

    x = clustered(100, 16)
    ix = build_index(x, kind="hnsw", m=4)
    ix.save(tmp_path / "h")
    header, sec = read_container(tmp_path / "h")
    nbr0 = np.array(sec["nbr0"])
    nbr0[3, 0] = 10_000
    sec = {k: np.array(v) for k, v in sec.items()}
    sec["nbr0"] = nbr0
    header = {k: v for k, v in header.items() if not k.startswith("payload")}
    write_container(tmp_path / "bad", header, sec)
    bad = load_index(tmp_path / "bad")
    with pytest.raises(IndexFileError, match="names a node outside the graph"):
        bad.search_rows(x[:2], 5, ef_search=100)
