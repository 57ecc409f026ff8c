"""Checks shared by the step-program tests of every architecture: the op sequence is the
oracle, and a program must give its vectors bit for bit, also under concurrent callers."""

from __future__ import annotations

import threading

import numpy as np


def eager(model, seqs: list[list[int]]) -> np.ndarray:
    """The model's vectors from the op sequence (programs switched off for this call)."""
    limit, model.max_program_tokens = model.max_program_tokens, 0
    try:
        return model.embed(seqs)
    finally:
        model.max_program_tokens = limit


def assert_recorded_and_replayed(model, seqs: list[list[int]]) -> None:
    """The first call records a program for these lengths, the second replays it; both equal
    the op sequence."""
    want = eager(model, seqs)
    got = model.embed(seqs)
    assert tuple(len(s) for s in seqs) in model._programs
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.embed(seqs), want)


def assert_concurrent_callers_agree(model, seqs: list[list[int]], rounds: int) -> None:
    """Four threads embed at once: one runs the program, the others the op sequence (or the
    program once it is free); every vector is the same."""
    want = eager(model, seqs)
    bad: list[int] = []

    def worker() -> None:
        for i in range(rounds):
            if not np.array_equal(model.embed(seqs), want):
                bad.append(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and bad == []


def unpooled(model, seqs: list[list[int]]) -> np.ndarray:
    """The model's vectors from the op sequence with every activation allocated afresh (no
    program, no borrowed arena)."""
    pool, model._arenas = model._arenas, None
    try:
        return eager(model, seqs)
    finally:
        model._arenas = pool


def assert_pooled_passes_equal_fresh_ones(model, batches: list[list[list[int]]]) -> None:
    """Eager passes over an arena borrowed from the model's pool (grown, then reused for
    shorter batches) give the vectors of passes that allocate every activation."""
    assert model._arenas is not None
    for seqs in batches:
        np.testing.assert_array_equal(eager(model, seqs), unpooled(model, seqs))
    assert model._arenas.held_bytes > 0
