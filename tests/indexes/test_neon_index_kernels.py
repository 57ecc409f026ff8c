"""On AArch64, the index kernels (HNSW search and construction, Annoy search), run under
qemu-user on the items their real drivers make (``tests/codegen/qemu_tasks``), against the host
kernel or the numpy twin on the same index. Each bounds-checks every node it follows; here
they must also agree with the host."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen.isa import ISAS
from tests.codegen.qemu_tasks import NEON_ISAS, HarnessCache, QemuNative, requires_emulation

from .helpers import clustered, recall

pytestmark = [pytest.mark.emulation, requires_emulation]


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> HarnessCache:
    return HarnessCache(tmp_path_factory)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("quant", "mode"), [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_neon_hnsw_search_matches_the_host_kernel(harnesses, isa_name, quant, mode):
    """HNSW graph search (its kernel bounds-checks every node it follows) on the same index and
    queries as the host's kernel: the same beam search, so the same neighbours but for ties."""
    from embedpipe.indexes import build_index
    from embedpipe.indexes.hnsw_kernel import HNSW_MODULE, HNSW_SEARCH, HnswKernel

    x, q = clustered(600, 24, seed=1), clustered(12, 24, seed=2)
    ix = build_index(x, kind="hnsw", quant=quant, m=8, ef_construction=40, scale_mode=mode)
    qn = ix.prepare_queries(q)
    want_s, want_r = HnswKernel.for_index(ix).search(qn, 10, 40)
    native = QemuNative(HNSW_SEARCH[quant], ISAS[isa_name], harnesses(HNSW_MODULE, isa_name), lambda: [qn])
    got_s, got_r = HnswKernel(ix, native).search(qn, 10, 40)
    assert native.runs == 1 and recall(got_r, want_r) >= 0.97
    np.testing.assert_allclose(got_s[:, 0], want_s[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_annoy_search_matches_the_host_kernel(harnesses, isa_name, monkeypatch):
    """Annoy's tree walk (bounds-checked like HNSW's, its candidate count the kernel's result)
    on the same forest and queries as the host kernel."""
    from embedpipe.indexes import annoy_kernel, build_index

    x, q = clustered(500, 16, seed=3), clustered(6, 16, seed=4)
    ix = build_index(x, kind="annoy", n_trees=4)
    qn = ix.prepare_queries(q)
    want_s, want_r = ix._search_rows(qn, 10)
    native = QemuNative(
        annoy_kernel.ANNOY_SEARCH, ISAS[isa_name], harnesses(annoy_kernel.ANNOY_MODULE, isa_name), lambda: [qn]
    )
    monkeypatch.setattr(annoy_kernel.ANNOY_SEARCH, "native", lambda isa=None: native)
    got_s, got_r = ix._search_rows(qn, 10)
    assert native.runs == len(qn)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("quant", "mode"), [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_neon_hnsw_insertion_matches_the_numpy_twin(harnesses, isa_name, quant, mode):
    """HNSW graph construction (insert and link kernels, their context and scratch arrays of
    addresses relocated too) against the numpy twin, as the host's kernels are."""
    from embedpipe.indexes.hnsw import storage_of
    from embedpipe.indexes.hnsw_build import build_graph
    from embedpipe.indexes.hnsw_insert_kernel import KERNELS, MODULES, InsertKernels
    from embedpipe.indexes.quant import quantize

    st = storage_of(*quantize(clustered(300, 16, seed=3), quant, mode), quant, mode)
    exe, isa = harnesses(MODULES[quant], isa_name), ISAS[isa_name]
    insert, link = (QemuNative(k, isa, exe, lambda: [], nested=("ctx", "scr")) for k in KERNELS[quant])
    got = build_graph(st, 6, 40, seed=5, threads=2, kernels=InsertKernels(insert, link))
    twin = build_graph(st, 6, 40, seed=5, native=False)
    assert insert.runs > 0
    assert (got.entry, got.maxlevel) == (twin.entry, twin.maxlevel)
    assert (got.nbr0 == twin.nbr0).all(axis=1).mean() >= 0.99
    assert (got.nbru == twin.nbru).all(axis=1).mean() >= 0.99
