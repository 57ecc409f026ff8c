"""Synthetic bench vectors: generated in blocks, equal to the documented one-shot draw."""

from __future__ import annotations

import numpy as np

from embedpipe.indexes.bench_data import SYNTHETIC_BLOCK, synthetic_vectors


def test_synthetic_vectors_in_blocks_equal_the_one_shot_draw():
    n, d, seed = SYNTHETIC_BLOCK + 37, 12, 3
    rng = np.random.default_rng(seed)  # the same draws in one call each, as the generator documents
    common = rng.standard_normal(d)
    topics = rng.standard_normal((max(8, n // 300), d))
    subs = rng.standard_normal((max(8, n // 30), d))
    topic_of = rng.integers(0, len(topics), len(subs))
    which = rng.integers(0, len(subs), n)
    x = 0.35 * common + 0.55 * topics[topic_of[which]] + 0.45 * subs[which]
    x = (x + 1.4 * rng.standard_normal((n, d)) * rng.uniform(0.7, 1.3, (n, 1))).astype(np.float32)
    want = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = synthetic_vectors(n, d, seed=seed)
    assert got.dtype == np.float32 and got.shape == (n, d)
    np.testing.assert_array_equal(got, want)
