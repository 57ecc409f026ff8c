"""`bench index` rows: batched QPS timed on the first BATCH_QUERIES, recall over every query."""

from __future__ import annotations

import numpy as np

from embedpipe.indexes.bench_measure import BATCH_QUERIES, Row, measure


def test_recall_counts_every_query_while_batches_are_timed_on_the_first_ones():
    nq = BATCH_QUERIES + 100
    truth = np.arange(nq * 10).reshape(nq, 10)
    q = np.arange(nq, dtype=np.float32)[:, None]
    sizes: list[int] = []

    def batch(qq: np.ndarray) -> np.ndarray:
        sizes.append(len(qq))
        found = truth[: len(qq)].copy()
        found[BATCH_QUERIES:] = -1  # the queries beyond the timed ones find nothing
        return found

    row = measure(Row("x", "y"), lambda v: truth[0], batch, q, 5, truth, repeats=2)
    assert sizes == [BATCH_QUERIES, BATCH_QUERIES, nq]
    assert row.recall_at_10 == BATCH_QUERIES / nq and row.qps_batch > 0 and row.qps_single > 0


def test_few_queries_are_timed_and_scored_in_the_same_calls():
    truth = np.arange(40).reshape(4, 10)
    sizes: list[int] = []
    row = measure(
        Row("x", "y"), lambda v: truth[0], lambda qq: sizes.append(len(qq)) or truth, truth[:, :1], 2, truth, 3
    )
    assert sizes == [4, 4, 4] and row.recall_at_10 == 1.0
