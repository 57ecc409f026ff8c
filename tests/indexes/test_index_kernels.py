"""The Annoy / HNSW kernels on every ISA this CPU runs, against their numpy / Python twins,
with widths that are not a multiple of any vector width."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import runnable_isas
from embedpipe.indexes import build_index
from embedpipe.indexes.annoy_kernel import ANNOY_MODULE, ANNOY_SEARCH, AnnoyScratch
from embedpipe.indexes.hnsw import storage_of
from embedpipe.indexes.hnsw_build import build_graph
from embedpipe.indexes.hnsw_insert_kernel import MODULES, InsertKernels
from embedpipe.indexes.hnsw_kernel import HNSW_MODULE, HNSW_SEARCH, HnswKernel
from embedpipe.indexes.quant import quantize
from tests.codegen.helpers import assert_signature_is_the_compiled_ir_type

from .helpers import clustered, recall

ISAS = runnable_isas()
IDS = [s.name for s in ISAS]
D = 37  # ragged for every ISA's lanes


@pytest.mark.parametrize("module", [ANNOY_MODULE, HNSW_MODULE, *MODULES.values()], ids=lambda m: m.name)
def test_ctypes_signature_is_the_compiled_ir_type(module):
    assert_signature_is_the_compiled_ir_type(module, ISAS[0])


@pytest.mark.parametrize("isa", ISAS, ids=IDS)
def test_annoy_traversal_matches_python(isa):
    x = clustered(900, D, seed=21)
    ix = build_index(x[:850], kind="annoy", n_trees=5)
    native = ANNOY_SEARCH.native(isa)
    assert native is not None
    scratch = AnnoyScratch(ix.nodes, ix.dim, ix.n_items, ix._roots_arr, "test.ann")
    for qi in ix.prepare_queries(x[850:870]):
        for search_k in (300, 10**9):  # a cut-off (heap ties may order differently), no cut-off
            cand, scores = scratch.run(native, qi, search_k)
            assert len(np.unique(cand)) == len(cand)
            exact = ix.items[cand] @ qi / np.maximum(ix.item_norm[cand], 1e-30)
            np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-6)
            want = ix._candidates(None, qi, search_k)
            if search_k > ix.n_items:
                np.testing.assert_array_equal(np.sort(cand), want)
            else:
                top, top_want = (
                    cand[np.argsort(-scores)[:10]],
                    want[np.argsort(-(ix.items[want] @ qi / np.maximum(ix.item_norm[want], 1e-30)))[:10]],
                )
                assert len(set(top.tolist()) & set(top_want.tolist())) >= 8


@pytest.mark.parametrize("isa", ISAS, ids=IDS)
@pytest.mark.parametrize("quant,mode", [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_hnsw_search_matches_reference(isa, quant, mode, monkeypatch):
    x, q = clustered(1200, D, seed=1), clustered(40, D, seed=2)
    ix = build_index(x, kind="hnsw", quant=quant, m=8, ef_construction=60, scale_mode=mode)
    native = HNSW_SEARCH[quant].native(isa)
    qn = ix.prepare_queries(q)
    monkeypatch.setenv("EMBEDPIPE_THREADS", "1")
    s_one, r_one = HnswKernel(ix, native).search(qn, 10, 40)
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # 40 queries: two items on the pool
    s_two, r_two = HnswKernel(ix, native).search(qn, 10, 40)
    np.testing.assert_array_equal(r_two, r_one)
    np.testing.assert_array_equal(s_two, s_one)
    s_r, r_r = ix.search_reference(qn, 10, 40)
    assert recall(r_one, r_r) >= 0.97  # same beam search; only tie order may differ
    np.testing.assert_allclose(s_one[:, 0], s_r[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS, ids=IDS)
@pytest.mark.parametrize("quant,mode", [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_hnsw_insertion_matches_numpy_twin(isa, quant, mode, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # batches of several nodes: items on both workers
    codes, scale, offset = quantize(clustered(600, D, seed=4), quant, mode)
    st = storage_of(codes, scale, offset, quant, mode)
    kernels = InsertKernels.get(quant, isa)
    assert kernels is not None, f"HNSW insert kernels failed to compile for {isa.name}"
    native = build_graph(st, 6, 32, seed=3, kernels=kernels)
    twin = build_graph(st, 6, 32, seed=3, native=False)
    assert (native.entry, native.maxlevel) == (twin.entry, twin.maxlevel)
    # same algorithm; only a float rounding difference on a near-tie could change a row
    assert (native.nbr0 == twin.nbr0).all(axis=1).mean() >= 0.99
    assert (native.nbru == twin.nbru).all(axis=1).mean() >= 0.99
