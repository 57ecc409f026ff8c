"""Packed-sequence encoder attention (on the QKV product before its bias) vs a float64 oracle on every runnable ISA: ragged lengths (1, 2, 31, 33,
257 …; around the 8-row query blocks), several sequences per call, optional per-head bias,
head dims that are and are not multiples of the vector width."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, runnable_isas
from embedpipe.codegen.encoder_attention import (
    ENCODER_ATTENTION,
    PAIR_OVERHEAD,
    attention_reference,
    balanced_ranges,
)

ISAS = [s for s in runnable_isas()]
CASES = [
    ([1], 2, 32),
    ([2, 1], 3, 32),
    ([8, 9, 7], 3, 16),
    ([31, 33], 4, 64),
    ([257], 2, 24),
    ([14] * 9 + [5], 12, 32),
    ([17, 16], 2, 7),
]


def oracle(qkv, h, d, starts, lengths, scale, bias):
    out = np.zeros((qkv.shape[0], h * d))
    hidden = h * d
    for st, n in zip(starts, lengths):
        blk = qkv[st : st + n].astype(np.float64)
        for head in range(h):
            q = blk[:, head * d : (head + 1) * d]
            k = blk[:, hidden + head * d : hidden + (head + 1) * d]
            v = blk[:, 2 * hidden + head * d : 2 * hidden + (head + 1) * d]
            s = q @ k.T * scale + (0 if bias is None else bias[head, :n, :n])
            p = np.exp(s - s.max(1, keepdims=True))
            out[st : st + n, head * d : (head + 1) * d] = (p / p.sum(1, keepdims=True)) @ v
    return out


def product(qkv: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(y, bias) whose epilogue ``y + bias`` is ``qkv``."""
    qb = rng.standard_normal(qkv.shape[1]).astype(np.float32)
    return qkv - qb, qb


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("lens,h,d", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64(isa, lens, h, d, with_bias):
    rng = np.random.default_rng(len(lens) * 100 + d)
    lengths = np.array(lens)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = int(lengths.sum())
    y, qb = product((rng.standard_normal((t, 3 * h * d + 5)) * 2).astype(np.float32), rng)
    qkv = y + qb
    bias = rng.standard_normal((h, max(lens) + 2, max(lens) + 2)).astype(np.float32) if with_bias else None
    got = ENCODER_ATTENTION.on(isa)(y, qb, t, h, d, starts, lengths, 0.2, bias, threads=2)
    want = oracle(qkv, h, d, starts, lengths, 0.2, bias)
    assert got.shape == want.shape and np.abs(got - want).max() <= 2e-5
    assert np.abs(attention_reference(qkv, h, d, starts, lengths, 0.2, bias) - want).max() <= 2e-5


def test_sequences_do_not_see_each_other():
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((40, 3 * 64)).astype(np.float32)
    zero = np.zeros(3 * 64, np.float32)
    alone = ENCODER_ATTENTION(qkv[:17], zero, 17, 2, 32, np.array([0]), np.array([17]), 0.2)
    packed = ENCODER_ATTENTION(qkv, zero, 40, 2, 32, np.array([0, 17]), np.array([17, 23]), 0.2)
    assert np.abs(packed[:17] - alone).max() <= 1e-6


def test_out_of_range_sequences_are_refused():
    qkv = np.zeros((10, 96), np.float32)
    zero = np.zeros(96, np.float32)
    with pytest.raises(KernelInputError, match="outside"):
        ENCODER_ATTENTION(qkv, zero, 10, 1, 32, np.array([5]), np.array([6]), 1.0)
    with pytest.raises(KernelInputError, match="outside"):
        ENCODER_ATTENTION(qkv, zero, 10, 1, 32, np.array([0]), np.array([0]), 1.0)
    with pytest.raises(KernelInputError, match="bias"):
        ENCODER_ATTENTION(qkv, zero, 10, 1, 32, np.array([0]), np.array([10]), 1.0, np.zeros((1, 4, 4), np.float32))
    with pytest.raises(KernelInputError, match="holds no"):
        ENCODER_ATTENTION(qkv, zero, 10, 2, 32, np.array([0]), np.array([10]), 1.0)
    with pytest.raises(KernelInputError, match="rows"):
        ENCODER_ATTENTION(qkv, zero, 9, 1, 32, np.array([0]), np.array([9]), 1.0)
    with pytest.raises(KernelInputError, match="QKV bias"):
        ENCODER_ATTENTION(qkv, zero[:90], 10, 1, 32, np.array([0]), np.array([10]), 1.0)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
def test_output_buffer_gets_the_same_values_and_a_bad_one_is_refused(isa):
    rng = np.random.default_rng(3)
    lengths, starts = np.array([31, 2]), np.array([0, 31])
    y = rng.standard_normal((33, 3 * 64)).astype(np.float32)
    qb = rng.standard_normal(3 * 64).astype(np.float32)
    run = ENCODER_ATTENTION.on(isa)
    want = run(y, qb, 33, 2, 32, starts, lengths, 0.2, threads=2)
    out = np.full((33, 64), np.nan, np.float32)
    assert run(y, qb, 33, 2, 32, starts, lengths, 0.2, threads=2, out=out) is out
    assert np.array_equal(out, want)
    with pytest.raises(KernelInputError, match="out must be"):
        run(y, qb, 33, 2, 32, starts, lengths, 0.2, out=np.zeros((33, 65), np.float32))
    with pytest.raises(KernelInputError, match="out must be"):
        run(y, qb, 33, 2, 32, starts, lengths, 0.2, out=y[:, :64])


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
def test_peaked_softmax_underflows_to_zero_weight(isa):
    """Scores hundreds apart: most exp terms fall past the kernel's clamp and must weigh ~0."""
    rng = np.random.default_rng(5)
    lengths, starts = np.array([14, 59]), np.array([0, 14])
    y = (rng.standard_normal((73, 3 * 64)) * 3).astype(np.float32)
    qb = rng.standard_normal(3 * 64).astype(np.float32)
    got = ENCODER_ATTENTION.on(isa)(y, qb, 73, 2, 32, starts, lengths, 8.0, threads=2)
    want = oracle(y + qb, 2, 32, starts, lengths, 8.0, None)
    assert np.isfinite(got).all() and np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_balanced_ranges_cover_every_pair_with_equal_work(parts):
    """Length-sorted sequences (as batches come): contiguous ranges over all pairs, each within
    one pair's work of an equal share."""
    rng = np.random.default_rng(parts)
    for lengths in (np.sort(rng.integers(1, 80, 9)), np.array([5]), np.array([3, 100]), np.full(32, 14)):
        ranges = balanced_ranges(lengths.tolist(), 12, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == lengths.size * 12
        assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
        work = np.repeat(lengths * (lengths + PAIR_OVERHEAD), 12).astype(np.float64)
        shares = [work[a:b].sum() for a, b in ranges]
        if len(ranges) == parts:
            assert max(abs(s - work.sum() / parts) for s in shares) <= work.max()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_a_recorded_step_takes_each_replays_sequences(threads, with_bias):
    """``record_per_run``: one recorded step whose items every replay rewrites from its own
    ``Sequences``; each replay equals the eager call with those sequences, and a
    replay's sequences are checked before anything runs."""
    from embedpipe.codegen.encoder_attention import record_per_run
    from embedpipe.codegen.program import Program
    from embedpipe.codegen.sequences import Sequences

    native = ENCODER_ATTENTION.native(None)
    if native is None:
        pytest.skip("no JIT here")
    rng = np.random.default_rng(threads)
    t, h, d = 64, 4, 32
    y = rng.standard_normal((t, 3 * h * d)).astype(np.float32)
    qb = rng.standard_normal(3 * h * d).astype(np.float32)
    bias = rng.standard_normal((h, 40, 40)).astype(np.float32) if with_bias else None
    out = np.zeros((t, h * d), np.float32)
    program = Program.record(lambda: record_per_run(native, y, qb, h, d, 0.2, 40, threads, out))
    assert program.steps == 1 and program.ops == 1 and not program.holes
    splits = [([0], [40]), ([0, 20, 33], [20, 13, 31]), ([0, 1, 2, 3], [1, 1, 1, 40]), ([5], [7])]
    for starts, lengths in splits + splits[::-1]:
        starts, lengths = np.array(starts), np.array(lengths)
        want = ENCODER_ATTENTION.on(native.isa)(y, qb, t, h, d, starts, lengths, 0.2, bias, threads=threads)
        out.fill(0)
        program.run(threads, Sequences(starts, lengths, bias))
        np.testing.assert_array_equal(out, want)
    out.fill(7)
    for bad, match in [(([0], [41]), "holds 40|L >= 41"), (([30], [40]), "outside"), (([0], [0]), "outside")]:
        with pytest.raises(KernelInputError, match=match):
            program.run(threads, Sequences(np.array(bad[0]), np.array(bad[1]), bias))
    assert (out == 7).all()
    with pytest.raises(KernelInputError, match="outside a recording"):
        record_per_run(native, y, qb, h, d, 0.2, 40, threads, out)


def test_the_layers_of_a_replay_check_their_sequences_once():
    from embedpipe.codegen.encoder_attention import record_per_run
    from embedpipe.codegen.program import Program
    from embedpipe.codegen.sequences import Sequences

    native = ENCODER_ATTENTION.native(None)
    if native is None:
        pytest.skip("no JIT here")
    rng = np.random.default_rng(0)
    y = rng.standard_normal((20, 3 * 64)).astype(np.float32)
    qb = np.zeros(3 * 64, np.float32)
    outs = [np.zeros((20, 64), np.float32) for _ in range(3)]
    program = Program.record(lambda: [record_per_run(native, y, qb, 2, 32, 0.2, 20, 2, out) for out in outs])
    seqs = Sequences(np.array([0, 9]), np.array([9, 11]))
    program.run(2, seqs)
    assert program.steps == 3 and len(seqs.cache) == 1
    want = ENCODER_ATTENTION(y, qb, 20, 2, 32, seqs.starts, seqs.lengths, 0.2)
    for out in outs:
        np.testing.assert_array_equal(out, want)
