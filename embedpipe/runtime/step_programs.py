"""Recorded forward passes of a model, one per sequence-length tuple (``codegen.program``).

A model whose short batches run as step programs records the layer stack once per tuple of
sequence lengths over preallocated activations (its arena) and replays it afterwards. What
every such model shares lives here: the least-recently-used table of recorded passes, the
check that a recording is complete (else the model stays on its op sequence), and the
one-run-at-a-time rule of a program (a caller that finds it busy runs the ops itself).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.program import Program

log = logging.getLogger(__name__)

#: Batches of at most this many tokens run as a recorded step program (one native call
#: instead of a driver call and fork per op); the least recently used dropped beyond
#: MAX_PROGRAMS.
PROGRAM_MAX_TOKENS = 128
MAX_PROGRAMS = 16


class RecordedPass:
    """A step program with the arena and everything else its words point at (``keep``)."""

    def __init__(self, program: Program, arena: Any, keep: object = None):
        self.program, self.arena, self.keep = program, arena, keep
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
        steps: int,
        arena: Any,
        keep: object,
        limit: int,
        name: str,
    ) -> RecordedPass | None:
        """Record ``forward()`` (which runs the ops over ``arena``) and keep it under ``key``;
        None when there is no runner or the recording does not hold the ``steps`` expected (an
        op ran outside the kernels: nothing to replay), and the caller stays on its ops."""
        program = Program.record(forward, isa)
        if program is None or program.steps != steps:
            log.debug("no step program for %s (%s)", name, "no runner" if program is None else f"{program.steps} steps")
            return None
        recorded = RecordedPass(program, arena, keep)
        with self._lock:
            self.programs[key] = recorded
            while len(self.programs) > limit:
                self.programs.popitem(last=False)
        return recorded
