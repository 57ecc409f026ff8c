"""The forward-pass allocator policy (runtime/allocator) and the pass size of encode_ids."""

import resource
import sys

import numpy as np
import pytest

from embedpipe.runtime import allocator, embedder


def test_policy_is_applied_once_and_reports_the_same():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    if sys.platform.startswith("linux") and allocator._mallopt() is not None:
        assert first is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc policy")
def test_freed_activation_sized_arrays_are_reused_without_page_faults():
    if not allocator.keep_freed_memory():
        pytest.skip("not glibc")
    size = 6 * 1024 * 1024 // 4  # a 6 MB activation, below the mmap ceiling

    def layer():
        a = np.empty(size, np.float32)
        a.fill(1.0)
        b = np.empty(size, np.float32)
        b.fill(2.0)
        c = np.empty(2 * size, np.float32)
        c.fill(3.0)
        del a, b, c

    layer()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layer()
    # Without the policy glibc trims and re-grows its heap: ~15 000 faults for these 10 layers.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 500


def test_encode_ids_runs_passes_of_at_most_pass_tokens():
    class Model:
        out_dim, max_tokens, dims = 4, 4096, (4,)

        def __init__(self):
            self.passes = []

        def embed(self, seqs):
            self.passes.append(sum(map(len, seqs)))
            return np.ones((len(seqs), 4), np.float32)

    emb = object.__new__(embedder.Embedder)
    emb.model = Model()
    emb.dim, emb.max_tokens, emb.dims, emb.model_path = 4, 4096, (4,), "m.gguf"
    ids = [[1] * 700] * 8 + [[1] * 3000]
    out = emb.encode_ids(ids)
    assert out.shape == (9, 4)
    assert max(emb.model.passes[:-1]) <= embedder.PASS_TOKENS
    assert emb.model.passes[-1] == 3000  # a longer text runs alone
