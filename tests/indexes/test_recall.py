"""The one recall measure: sets of the top k, "no result" markers, the k default."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes.recall import recall_vs_exact


def test_recall_vs_exact():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, 1], [5, -1, -1, -1]])
    # query 0: {4,3,1} of 4 (order ignored); query 1: {5} of 4
    assert recall_vs_exact(approx, exact, k=4) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert recall_vs_exact(approx, exact, k=1) == pytest.approx((0 + 1) / 2)
    ids = np.array([["a", "b"]], dtype=object)
    assert recall_vs_exact(ids, ids, k=2) == 1.0
    # exact with fewer than k valid results: denominator is the valid count
    assert recall_vs_exact(np.array([[1, 7]]), np.array([[1, -1]]), k=2) == 1.0
    with pytest.raises(ValueError):
        recall_vs_exact(np.zeros((2, 3)), np.zeros((3, 3)))
    assert recall_vs_exact(approx, exact) == recall_vs_exact(approx, exact, k=4)  # k: width of exact
