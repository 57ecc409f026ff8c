"""Recall targets at full size (10k x 768, synthetic stand-in vectors): marked slow."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes import build_index
from embedpipe.indexes.bench_data import synthetic_vectors

from .helpers import recall

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    x = synthetic_vectors(10_300, 768)
    base, q = x[:10_000], x[10_000:]
    return base, q, np.argsort(-(q @ base.T), axis=1)[:, :10]


def test_int8_brute_keeps_99_percent_recall(data):
    base, q, truth = data
    for mode in ("dim", "vector"):
        ix = build_index(base, kind="brute", quant="int8", scale_mode=mode)
        assert recall(ix.search_rows(q, 10)[1], truth) >= 0.99, mode


def test_hnsw_10k_768_keeps_95_percent_recall(data):
    """Build time is a benchmark figure (`embedpipe bench index`), not asserted here."""
    base, q, truth = data
    ix = build_index(base, kind="hnsw", m=16, ef_construction=100)
    assert recall(ix.search_rows(q, 10, ef_search=64)[1], truth) >= 0.95
