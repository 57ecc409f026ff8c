"""Recall of an approximate top-k against the exact one: the one measure every index test,
benchmark and evaluation uses."""

from __future__ import annotations

import numpy as np


def recall_vs_exact(approx: np.ndarray, exact: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (ids compared as sets).

    `approx` and `exact` are (queries, ≥k) arrays of ids or rows (k defaults to the width of
    `exact`); -1 / None mark "no result" and never match. Order inside the top k does not matter,
    so equal-score swaps cost nothing; a tie exactly at rank k can still swap which id is in the
    set (an exact search that breaks ties by a stable order keeps the figure deterministic).
    """
    approx, exact = np.asarray(approx, dtype=object), np.asarray(exact, dtype=object)
    if approx.ndim != 2 or exact.ndim != 2 or len(approx) != len(exact):
        raise ValueError(f"recall_vs_exact needs two (queries, k) arrays, got {approx.shape} and {exact.shape}")
    k = exact.shape[1] if k is None else k
    total = 0.0
    for a, e in zip(approx[:, :k], exact[:, :k]):
        truth = {x for x in e.tolist() if x is not None and x != -1}
        got = {x for x in a.tolist() if x is not None and x != -1}
        total += len(truth & got) / len(truth) if truth else 1.0
    return total / len(approx) if len(approx) else 0.0
