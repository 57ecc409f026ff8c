"""Recorded forward passes of a model (``codegen.program``).

A model whose short batches run as step programs records the layer stack once per tuple of
sequence lengths over preallocated activations (its arena) and replays it afterwards. What
every such model shares lives here: the least-recently-used table of recorded passes, the
check that a recording is complete (else the model stays on its op sequence), and the
one-run-at-a-time rule of a program (a caller that finds it busy runs the ops itself).

Longer batches rarely repeat a length tuple, but their shape-dependent ops (products, norms)
depend only on the token count. ``BucketedPasses`` records those once per token count
rounded up to ``BUCKET_TOKENS`` (the model pads a pass with one extra sequence), records the
length-dependent ops (attention) as steps each replay rewrites from its sequences
(``Recorder.rewritten``) or as holes of the program (``Recorder.hole``), and keeps every
such program over one shared arena, grown to the largest pass. ``run``'s ``replay_arg`` is
the argument both receive.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.program import Program
from embedpipe.codegen.sequences import Sequences
from embedpipe.runtime.arena import Arena

log = logging.getLogger(__name__)

#: Batches of at most this many tokens run as a recorded step program (one native call
#: instead of a driver call and fork per op). Recorded passes are kept up to MAX_PROGRAMS of
#: them and MAX_PROGRAM_BYTES of the buffers they hold, the least recently used dropped first:
#: queries spread over dozens of lengths (a program each), and a length that was dropped pays
#: its recording again when it comes back.
PROGRAM_MAX_TOKENS = 128
MAX_PROGRAMS = 64
MAX_PROGRAM_BYTES = 64 << 20
#: Passes of more tokens than PROGRAM_MAX_TOKENS run as the program of their token count
#: rounded up to a multiple of this (``BucketedPasses``): at most this many padded rows.
BUCKET_TOKENS = 16


def held_bytes(*roots: object) -> int:
    """Bytes of the distinct numpy buffers reachable from ``roots`` through containers and
    plain objects' attributes (an arena, a program's scratch and step tables); views count
    their base once."""
    seen: set[int] = set()
    total = 0
    stack: list[tuple[object, int]] = [(r, 0) for r in roots]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
            continue
        if depth > 6 or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in obj)
        elif hasattr(obj, "__dict__") and not callable(obj):
            stack.extend((v, depth + 1) for v in vars(obj).values())
    return total


class RecordedPass:
    """A step program with the arena and everything else its words point at (``keep``)."""

    def __init__(self, program: Program, arena: Any, keep: object = None):
        """``arena`` None: the caller keeps the activations (``BucketedPasses``), and they are
        not counted in ``nbytes``."""
        self.program, self.arena, self.keep = program, arena, keep
        self.nbytes = held_bytes(arena, keep, program.keep, program.table, program.counters, program._words)
        self._lock = threading.Lock()

    def run(
        self, threads: int, load: Callable[[Any], object], result: Callable[[Any], np.ndarray]
    ) -> np.ndarray | None:
        """``load(arena)`` the inputs, run every step, return ``result(arena)`` (made before
        the arena is free again); None when another thread is running this program."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            load(self.arena)
            self.program.run(threads)
            return result(self.arena)
        finally:
            self._lock.release()


class ProgramCache:
    """Recorded passes per key (a sequence-length tuple), least recently used dropped first;
    safe to use from several threads."""

    def __init__(self) -> None:
        self.programs: OrderedDict[Hashable, RecordedPass] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> RecordedPass | None:
        with self._lock:
            recorded = self.programs.get(key)
            if recorded is not None:
                self.programs.move_to_end(key)
            return recorded

    def record(
        self,
        key: Hashable,
        forward: Callable[[], object],
        isa: IsaSpec | None,
        ops: int,
        arena: Any,
        keep: object,
        limit: int,
        name: str,
    ) -> RecordedPass | None:
        """Record ``forward()`` (which runs the ops over ``arena``) and keep it under ``key``;
        None when there is no runner or the recording does not hold the ``ops`` expected (an
        op ran outside the kernels: nothing to replay), and the caller stays on its ops."""
        program = Program.record(forward, isa)
        if program is None or program.ops != ops:
            log.debug("no step program for %s (%s)", name, "no runner" if program is None else f"{program.ops} ops")
            return None
        recorded = RecordedPass(program, arena, keep)
        with self._lock:
            self.programs[key] = recorded
            held = sum(p.nbytes for p in self.programs.values())
            while len(self.programs) > 1 and (len(self.programs) > limit or held > MAX_PROGRAM_BYTES):
                held -= self.programs.popitem(last=False)[1].nbytes
        return recorded


@dataclass(frozen=True)
class PaddedPass:
    """A pass grown to its bucket (``pad_to_bucket``)."""

    ids: np.ndarray
    positions: np.ndarray
    bounds: np.ndarray  # sequence bounds, the padding sequence's included
    lengths: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.bounds[-1])


class BucketReplay(Sequences):
    """A bucketed pass's replay argument: the padded pass's sequences (and attention bias) for
    its attention steps, the ids and positions of its rows for its row gathers."""

    def __init__(self, padded: PaddedPass, bias: np.ndarray | None = None) -> None:
        super().__init__(padded.bounds[:-1], padded.lengths, bias)
        self.ids, self.positions = padded.ids, padded.positions


def pad_to_bucket(
    ids: np.ndarray, positions: np.ndarray, bounds: np.ndarray, lengths: np.ndarray, first_position: int = 0
) -> PaddedPass:
    """The pass with rows up to its bucket (``BucketedPasses.bucket``) as one more sequence:
    token 0 at positions ``first_position`` onwards, a sequence whose output no vector reads."""
    t = ids.size
    pad = BucketedPasses.bucket(t) - t
    if not pad:
        return PaddedPass(ids, positions, bounds, lengths)
    return PaddedPass(
        np.concatenate([ids, np.zeros(pad, np.int64)]),
        np.concatenate([positions, first_position + np.arange(pad)]),
        np.append(bounds, t + pad),
        np.append(lengths, pad),
    )


class BucketedPasses:
    """Recorded passes keyed by a token count that is a multiple of BUCKET_TOKENS, all over
    one arena, least recently used dropped first.

    ``run`` replays the program of a bucket (recording it first) with ``replay_arg`` for its
    rewritten steps and holes; one run at a time, as the arena is shared: a caller that finds
    it busy, or whose recording failed, gets None and runs the ops itself.  The arena is made for the first
    bucket; a larger bucket replaces it by one a quarter larger still and drops the programs
    (their words point at the old buffers), so it grows to the largest pass a model sees.
    """

    def __init__(self, limit: int = MAX_PROGRAMS):
        self.limit = limit
        self.arena: Arena | None = None
        self.cache = ProgramCache()
        self.failed = False
        self._lock = threading.Lock()

    @staticmethod
    def bucket(t: int) -> int:
        return -(-t // BUCKET_TOKENS) * BUCKET_TOKENS

    def run(
        self,
        t: int,
        record: Callable[[Arena], object],
        ops: int,
        isa: IsaSpec | None,
        threads: int,
        load: Callable[[Arena], object],
        result: Callable[[Arena], np.ndarray],
        replay_arg: object,
        name: str,
    ) -> np.ndarray | None:
        """``record(arena)`` runs the ops of a ``t``-row pass over ``arena`` (``t`` a bucket);
        ``load(arena)`` writes a pass's inputs, ``result(arena)`` reads its output."""
        if self.failed or t % BUCKET_TOKENS or not self._lock.acquire(blocking=False):
            return None
        try:
            if self.arena is None or self.arena.capacity < t:
                grown = 0 if self.arena is None else self.arena.capacity + self.arena.capacity // 4
                with self.cache._lock:
                    self.cache.programs.clear()
                self.arena = Arena(t, self.bucket(max(t, grown)))
            arena = self.arena
            arena.t = t
            recorded = self.cache.get(t)
            if recorded is None:
                recorded = self.cache.record(t, lambda: record(arena), isa, ops, None, None, self.limit, name)
                if recorded is None:
                    self.failed = True
                    return None
            load(arena)
            recorded.program.run(threads, replay_arg)
            return result(arena)
        finally:
            self._lock.release()
