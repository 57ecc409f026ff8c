"""Data and measures shared by the index tests."""

from __future__ import annotations

import numpy as np

from embedpipe.indexes.base import normalize_rows


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


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k
                          for f, t in zip(found, truth)]))
