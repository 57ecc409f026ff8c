"""Data and measures shared by the index tests."""

from __future__ import annotations

import numpy as np

from embedpipe.indexes.base import normalize_rows
from embedpipe.indexes.recall import recall_vs_exact


def clustered(n: int, d: int, clusters: int = 20, noise: float = 0.8, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: near-duplicates and ties like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return normalize_rows(x)


def uniform(n: int, d: int, seed: int = 0) -> np.ndarray:
    return normalize_rows(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


DATASETS = {"random": uniform, "clustered": clustered}


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q.astype(np.float64) @ x.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


recall = recall_vs_exact  # the package's one recall measure (top-k width of the truth)


def assert_same_knn(
    scores: np.ndarray,
    ids: np.ndarray,
    want_scores: np.ndarray,
    want_ids: np.ndarray,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Two top-k results agree: scores within tolerance, ids equal up to ties.

    Positions whose reference scores are equal within tolerance form a tied group whose ids may
    come in any order; a group that reaches rank k may hold different members of a larger tie,
    so only its scores are compared.
    """
    np.testing.assert_allclose(scores, want_scores, rtol=rtol, atol=atol)
    ids, want_ids = np.asarray(ids), np.asarray(want_ids)
    assert ids.shape == want_ids.shape, (ids.shape, want_ids.shape)
    k = want_ids.shape[1]
    for r, (row, want_row, s) in enumerate(zip(ids, want_ids, np.asarray(want_scores))):
        i = 0
        while i < k:
            j = i + 1
            while j < k and abs(s[j] - s[j - 1]) <= atol + rtol * abs(s[j - 1]):
                j += 1
            if j < k:
                assert sorted(row[i:j].tolist()) == sorted(want_row[i:j].tolist()), (
                    f"query {r}, ranks {i}..{j - 1}: {row[i:j]} != {want_row[i:j]}"
                )
            i = j
