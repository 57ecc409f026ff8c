"""Short batches run the gemma-embedding layer stack as a recorded step program: the vectors
must be bit-identical to the eager op sequence (the oracle), per sequence-length tuple, with
the eager path taken when the program is busy and beyond the token limit."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime import gemma_embedding, step_programs
from embedpipe.runtime.embedder import Embedder
from tests.runtime.step_program_checks import (
    assert_concurrent_callers_agree,
    assert_pooled_passes_equal_fresh_ones,
    assert_recorded_and_replayed,
)


@pytest.fixture(scope="module")
def model(tiny_model_q8):
    return Embedder.load(tiny_model_q8.path, backend="jit", threads=2).model


@pytest.mark.parametrize("lengths", [(1,), (2,), (31,), (33,), (5, 9), (1, 1, 30)])
def test_program_vectors_equal_the_eager_ones(model, lengths):
    rng = np.random.default_rng(sum(lengths))
    assert_recorded_and_replayed(model, [rng.integers(0, model.cfg.vocab, n).tolist() for n in lengths])


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
    """On the pool or fresh threads, concurrent callers get the op sequence's vectors."""
    assert_concurrent_callers_agree(model, [[7, 8, 9, 10, 11, 12]], rounds=40)


def test_programs_are_bounded_by_the_bytes_they_hold(model, monkeypatch):
    model._programs.clear()
    for n in (4, 5, 6):
        model.embed([list(range(n))])
    sizes = {key: p.nbytes for key, p in model._programs.items()}
    assert all(sizes.values())
    budget = sizes[(5,)] + sizes[(6,)]  # the two latest programs fit, all three do not
    monkeypatch.setattr(step_programs, "MAX_PROGRAM_BYTES", budget)
    model._programs.clear()
    for n in (4, 5, 6):
        model.embed([list(range(n))])
    assert list(model._programs) == [(5,), (6,)]
    assert sum(p.nbytes for p in model._programs.values()) <= budget


def test_held_bytes_counts_each_buffer_once():
    a = np.zeros(1000, np.float32)
    holder = type("Arena", (), {})()
    holder.rows = {"x": a, "view": a[10:20]}
    holder.more = [np.zeros((3, 4), np.int64), (a,)]
    assert step_programs.held_bytes(holder, a[::2]) == 4000 + 96


def _random(model, lengths):
    rng = np.random.default_rng(sum(lengths))
    return [rng.integers(0, model.cfg.vocab, n).tolist() for n in lengths]


def test_long_batches_borrow_an_arena_and_give_the_same_vectors(model):
    """Batches over the program limit write into an arena from the model's pool: grown for a
    longer batch, reused (as fewer rows) for a shorter one, bit-identical to fresh buffers."""
    lengths = [(70, 71), (40, 50, 45), (90, 91, 5)]
    assert_pooled_passes_equal_fresh_ones(model, [_random(model, n) for n in lengths])


def test_concurrent_long_batches_get_the_same_vectors(model):
    """Eager batches on four threads at once each borrow their own arena."""
    assert_concurrent_callers_agree(model, _random(model, (70, 71)), rounds=6)


# batches over PROGRAM_MAX_TOKENS: one of the 256-row bucket (first: the shared arena then
# holds every other bucket), two compositions of the 160-row bucket, and one that fills the
# 144-row bucket exactly (no padding sequence)
BUCKETED = [(90, 91, 70), (70, 71, 5), (40, 50, 60, 3), (70, 74)]


@pytest.mark.parametrize("threads", [1, 2])
def test_long_batches_replay_their_buckets_program(tiny_model_q8, threads):
    """Every composition equals the op sequence bit for bit (the window and global layers'
    attention run over the replay's sequences, the pad rows as one more sequence); batches
    of one bucket share its program."""
    from tests.runtime.step_program_checks import eager

    model = Embedder.load(tiny_model_q8.path, backend="jit", threads=threads).model
    for lengths in BUCKETED + BUCKETED[1:3]:
        seqs = _random(model, lengths)
        np.testing.assert_array_equal(model.embed(seqs), eager(model, seqs), err_msg=str(lengths))
    assert sorted(model._buckets.cache.programs) == [144, 160, 256]


def test_a_busy_bucket_runs_the_op_sequence(model):
    from tests.runtime.step_program_checks import eager

    seqs = _random(model, (70, 71))
    want = eager(model, seqs)
    model._buckets.cache.programs.clear()
    with model._buckets._lock:
        np.testing.assert_array_equal(model.embed(seqs), want)
    assert not model._buckets.cache.programs
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert list(model._buckets.cache.programs) == [144]


def test_bucketed_rows_are_gathered_natively_or_in_numpy(tiny_model_q8, monkeypatch):
    """A bucketed pass's first steps gather the token rows (times the embedding scale) and the
    RoPE rows of its positions, from tables that cover the arena's rows even past the
    context; where the tables cannot be gathered natively the rows are looked up in numpy:
    the same vectors either way."""
    from tests.runtime.step_program_checks import eager

    model = Embedder.load(tiny_model_q8.path, backend="jit", threads=2).model
    seqs = _random(model, (model.cfg.context + 20, 5))  # positions past the context
    want = eager(model, seqs)
    np.testing.assert_array_equal(model.embed(seqs), want)
    tables = model._gather_tables()
    assert tables is not None and tables[1].rows >= model._buckets.arena.capacity > model.cfg.context
    monkeypatch.setattr(model.ops, "gather_tables", lambda *a: None)
    model._tables = None
    model._buckets.cache.programs.clear()
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert model._gather_tables() is None and model._buckets.cache.programs
