"""Short batches run the gemma-embedding layer stack as a recorded step program: the vectors
must be bit-identical to the eager op sequence (the oracle), per sequence-length tuple, with
the eager path taken when the program is busy and beyond the token limit."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime import gemma_embedding
from embedpipe.runtime.embedder import Embedder


@pytest.fixture(scope="module")
def model(tiny_model_q8):
    return Embedder.load(tiny_model_q8.path, backend="jit", threads=2).model


def _eager(model, seqs):
    limit, model.max_program_tokens = model.max_program_tokens, 0
    try:
        return model.embed(seqs)
    finally:
        model.max_program_tokens = limit


@pytest.mark.parametrize("lengths", [(1,), (2,), (31,), (33,), (5, 9), (1, 1, 30)])
def test_program_vectors_equal_the_eager_ones(model, lengths):
    rng = np.random.default_rng(sum(lengths))
    seqs = [rng.integers(0, model.cfg.vocab, n).tolist() for n in lengths]
    want = _eager(model, seqs)
    got = model.embed(seqs)
    assert tuple(lengths) in model._programs
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.embed(seqs), want)  # replayed, not re-recorded


def test_busy_program_falls_back_to_the_op_sequence(model):
    seqs = [[3, 4, 5, 6]]
    want = model.embed(seqs)
    recorded = model._programs[(4,)]
    with recorded._lock:
        np.testing.assert_array_equal(model.embed(seqs), want)


def test_long_batches_and_many_lengths_stay_bounded(model, monkeypatch):
    monkeypatch.setattr(gemma_embedding, "MAX_PROGRAMS", 3)
    model._programs.clear()
    for n in range(2, 7):
        model.embed([list(range(n))])
    assert list(model._programs) == [(4,), (5,), (6,)]
    model.embed([list(range(model.max_program_tokens + 1))])
    assert (model.max_program_tokens + 1,) not in model._programs


def test_concurrent_callers_get_the_same_vectors(model):
    """Four threads embed at once: one runs the program, the others the op sequence (or the
    program after it is free), on the pool or fresh threads; every vector is the same."""
    import threading

    seqs = [[7, 8, 9, 10, 11, 12]]
    want = _eager(model, seqs)
    bad: list[int] = []

    def worker() -> None:
        for i in range(40):
            if not np.array_equal(model.embed(seqs), want):
                bad.append(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and bad == []
