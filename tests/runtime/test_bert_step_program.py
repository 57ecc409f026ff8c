"""Short BERT/MPNet passes run as recorded step programs (``runtime.step_programs``): the
vectors must be bit-identical to the op sequence (the oracle), per sequence-length tuple,
threads and pooling, with the op sequence taken when the program is busy, for calibration
passes and beyond the token limit."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime import bert, bert_extend
from embedpipe.runtime.convert import convert_checkout
from embedpipe.runtime.embedder import Embedder
from tests.runtime.bert_checkout_builder import build_bert_checkout, build_mpnet_checkout
from tests.runtime.step_program_checks import (
    assert_concurrent_callers_agree,
    assert_pooled_passes_equal_fresh_ones,
    assert_recorded_and_replayed,
)
from tests.runtime.step_program_checks import eager as _eager

BUILDERS = {
    "bert": build_bert_checkout,
    "bert_cls": lambda root: build_bert_checkout(root, pooling="cls", seed=5),
    "mpnet": build_mpnet_checkout,
}
LENGTHS = [(1,), (2,), (31,), (33,), (5, 9), (1, 1, 30)]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[tuple[str, str], object]:
    base = tmp_path_factory.mktemp("bert_program")
    return {
        (name, quant): convert_checkout(build(base / name), base / f"{name}-{quant}.gguf", quant)
        for name, build in BUILDERS.items()
        for quant in ("q8_0", "f32")
    }


@pytest.fixture(scope="module")
def models(ggufs):
    loaded: dict = {}

    def get(name: str, quant: str = "q8_0", threads: int = 2):
        key = (name, quant, threads)
        if key not in loaded:
            loaded[key] = Embedder.load(ggufs[(name, quant)], backend="jit", threads=threads).model
        return loaded[key]

    return get


def _seqs(model, lengths):
    rng = np.random.default_rng(sum(lengths) + len(lengths))
    return [rng.integers(0, model.cfg.vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("lengths", LENGTHS)
def test_program_vectors_equal_the_op_sequence(models, name, threads, lengths):
    model = models(name, threads=threads)
    assert model.max_program_tokens == bert.PROGRAM_MAX_TOKENS
    assert_recorded_and_replayed(model, _seqs(model, lengths))


def test_float_weights_run_as_programs_too(models):
    model = models("mpnet", "f32")
    seqs = _seqs(model, (4, 7))
    want = _eager(model, seqs)
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert (4, 7) in model._programs


def test_a_program_keeps_its_position_bias_when_the_table_grows(models):
    """MPNet's bias table is replaced by a larger one for a longer text: a program recorded
    before points at the old table, which it keeps alive."""
    model = models("mpnet")
    model._bias_cache = None
    seqs = _seqs(model, (3,))
    want = _eager(model, seqs)
    np.testing.assert_array_equal(model.embed(seqs), want)
    model.embed(_seqs(model, (40,)))  # grows the table
    np.testing.assert_array_equal(model.embed(seqs), want)


def test_busy_program_falls_back_to_the_op_sequence(models):
    model = models("bert")
    seqs = [[3, 4, 5, 6]]
    want = model.embed(seqs)
    with model._programs[(4,)]._lock:
        np.testing.assert_array_equal(model.embed(seqs), want)


def test_long_passes_and_calibration_run_the_ops(models):
    model = models("bert")
    model._programs.clear()
    model.embed([[5] * 43] * 3)  # 129 tokens: over the limit
    assert not model._programs
    errors = bert_extend.BlockErrors()
    model._embed_pass([[7, 8, 9]], probe=errors)
    assert not model._programs and errors.energy


def test_many_lengths_stay_bounded(models, monkeypatch):
    monkeypatch.setattr(bert, "MAX_PROGRAMS", 3)
    model = models("bert")
    model._programs.clear()
    for n in range(2, 7):
        model.embed([list(range(n))])
    assert list(model._programs) == [(4,), (5,), (6,)]


def test_concurrent_callers_get_the_same_vectors(models):
    assert_concurrent_callers_agree(models("mpnet"), [[7, 8, 9, 10, 11, 12], [13, 14]], rounds=30)


@pytest.mark.parametrize("name", ["bert", "mpnet"])
def test_long_passes_borrow_an_arena_and_give_the_same_vectors(models, name):
    """Passes over the program limit write into an arena from the model's pool: grown for a
    longer pass, reused (as fewer rows) for a shorter one, bit-identical to fresh buffers."""
    model = models(name)
    batches = [_seqs(model, lengths) for lengths in ((40, 41, 42, 43), (33, 34, 35, 36), (45, 46, 47, 44, 40))]
    assert_pooled_passes_equal_fresh_ones(model, batches)


def test_concurrent_long_passes_get_the_same_vectors(models):
    """Eager passes on four threads at once each borrow their own arena."""
    model = models("bert")
    assert_concurrent_callers_agree(model, _seqs(model, (40, 41, 42, 43)), rounds=8)


# passes over PROGRAM_MAX_TOKENS: one of the 256-row bucket (first: the shared arena then holds
# the others), three compositions of the 160-row bucket (145..160 tokens), one that fills it
# exactly (no padding sequence)
BUCKETED = [(60, 61, 62, 63), (40, 41, 42, 22), (45, 46, 47, 12), (33, 34, 35, 36, 1, 1, 1, 4), (40, 40, 40, 40)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_long_passes_replay_their_buckets_program(models, name, threads):
    """Every composition equals the op sequence bit for bit; passes of one bucket share its
    program (the pad rows are one more sequence, whose output no vector reads)."""
    model = models(name, threads=threads)
    model._buckets.cache.programs.clear()
    model._programs.clear()
    for lengths in BUCKETED + BUCKETED[1:3]:
        seqs = _seqs(model, lengths)
        want = _eager(model, seqs)
        np.testing.assert_array_equal(model.embed(seqs), want, err_msg=str(lengths))
    assert sorted(model._buckets.cache.programs) == [160, 256]
    assert not model._programs


@pytest.mark.parametrize("quant", ["q8_0", "f32"])
def test_bucketed_passes_gather_their_rows_natively_or_in_numpy(models, quant, monkeypatch):
    """The token and position rows of a bucketed pass are the program's first two steps;
    where a table has no native gather the pass looks them up in numpy before the replay:
    the same vectors either way."""
    model = models("mpnet", quant)
    seqs = _seqs(model, (50, 51, 52))
    want = _eager(model, seqs)
    model._buckets.cache.programs.clear()
    model._tables = None
    assert model._gather_tables() is not None
    np.testing.assert_array_equal(model.embed(seqs), want)
    monkeypatch.setattr(model.ops, "gather_tables", lambda *a: None)
    model._buckets.cache.programs.clear()
    model._tables = None
    assert model._gather_tables() is None
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert list(model._buckets.cache.programs) == [160]
    model._tables = None


def test_a_busy_bucket_runs_the_ops_and_a_larger_one_grows_the_arena(models):
    model = models("bert")
    seqs, longer = _seqs(model, (50, 50, 50)), _seqs(model, (60, 60, 60, 60))
    want, want_longer = _eager(model, seqs), _eager(model, longer)
    model._buckets.cache.programs.clear()
    with model._buckets._lock:
        np.testing.assert_array_equal(model.embed(seqs), want)
    assert not model._buckets.cache.programs
    model._buckets.arena = None
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert list(model._buckets.cache.programs) == [160] and model._buckets.arena.capacity == 160
    np.testing.assert_array_equal(model.embed(longer), want_longer)  # a new arena: the 160 program is gone
    assert list(model._buckets.cache.programs) == [240] and model._buckets.arena.capacity == 240
    np.testing.assert_array_equal(model.embed(seqs), want)
    assert list(model._buckets.cache.programs) == [240, 160]


def test_concurrent_bucketed_passes_get_the_same_vectors(models):
    """One caller at a time replays the shared-arena program; the others run the ops."""
    model = models("mpnet")
    assert_concurrent_callers_agree(model, _seqs(model, (40, 41, 42, 43)), rounds=8)
