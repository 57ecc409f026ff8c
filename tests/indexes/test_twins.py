"""Every fast search path (JIT scans, int8 GEMM shortlist, BLAS blocks, Annoy and HNSW kernels)
agrees with its reference twin on the same index."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import D
from .helpers import assert_same_knn, clustered, recall


def test_fast_path_agrees_with_its_reference_twin(implementations):
    ix = implementations.build()
    assert implementations.ready(ix), f"{implementations.name}: the fast path is unavailable on this host"
    q = ix.prepare_queries(clustered(24, D, seed=13))
    got, want = implementations.fast(ix, q, 10), implementations.reference(ix, q, 10)
    if implementations.floor is None:
        assert_same_knn(*got, *want, rtol=1e-4, atol=1e-5)
    else:
        assert recall(got[1], want[1]) >= implementations.floor
        np.testing.assert_allclose(got[0][:, 0], want[0][:, 0], rtol=1e-4, atol=1e-5)


def test_assert_same_knn_forgives_ties_only():
    want_s, want = np.array([[0.9, 0.5, 0.5, 0.1]], np.float32), np.array([[1, 2, 3, 4]])
    assert_same_knn(want_s, np.array([[1, 3, 2, 4]]), want_s, want)  # tied pair swapped
    with pytest.raises(AssertionError):
        assert_same_knn(want_s, np.array([[2, 1, 3, 4]]), want_s, want)  # distinct scores swapped
    edge_s = np.array([[0.9, 0.5, 0.1, 0.1]], np.float32)
    assert_same_knn(edge_s, np.array([[1, 2, 3, 7]]), edge_s, want)  # another member of a tie at k
    with pytest.raises(AssertionError):
        assert_same_knn(edge_s + [[0, 0, 0, 0.2]], want, edge_s, want)  # a score differs
