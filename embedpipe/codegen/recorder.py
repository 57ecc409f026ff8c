"""What the native call paths report as they run: a count of calls into compiled code (the
benchmark's native calls per forward), and a ``recording`` block in which forks are captured
instead of run (``codegen.program`` replays them as one step program)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

_native_calls = [0]


def count_native_call() -> None:
    """Count one call into compiled code (kernel paths that do not go through ``Native``)."""
    _native_calls[0] += 1


def native_calls() -> int:
    """Native calls made so far by this process (differences measure a piece of work)."""
    return _native_calls[0]


class Recorder:
    """Forks captured instead of run (``recording``): per fork the address of the kernel's task
    trampoline, its items as rows of 64-bit words, and which word of a row is a work-claiming
    ``counter`` (a parameter of that name), if any.  ``codegen.program`` replays them.  ``ops``
    counts the driver operations recorded: a driver whose work takes two forks (the second
    added with ``same_op``) records two steps and one operation.  ``hole(fn)`` records an
    operation that is not a fork: ``fn(arg)`` runs from Python at that point of every replay,
    with the replay's argument (an operation whose layout changes from run to run).
    ``rewritten(fill)`` marks the step recorded last as one whose items a replay first
    rewrites from its argument (such an operation kept inside the native run)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, np.ndarray, int | None]] = []
        self.holes: list[tuple[int, Callable[[Any], object]]] = []
        self.rewrites: list[tuple[int, Callable[[Any, np.ndarray], object]]] = []
        self.ops = 0
        self.after_add: list[Callable[[], None]] = []

    def hole(self, fn: Callable[[Any], object]) -> None:
        """An operation run by ``fn(arg)`` after the steps recorded so far, at every replay."""
        self.holes.append((len(self.steps), fn))
        self.ops += 1

    def rewritten(self, fill: Callable[[Any, np.ndarray], object]) -> None:
        """Every replay first calls ``fill(arg, items)`` for the step recorded last: it checks
        the replay's argument and writes that step's items (its rows of 64-bit words, whose
        number and layout are the recorded ones) in place; what it returns (arrays the new
        words point at) is kept alive until the replay ends."""
        if not self.steps:
            raise ValueError("rewritten() follows the step it rewrites")
        self.rewrites.append((len(self.steps) - 1, fill))

    def add(self, task: int, items: Sequence[Sequence[int]], counter: int | None = None, same_op: bool = False) -> None:
        self.steps.append((task, np.array(items, dtype=np.int64).reshape(len(items), -1), counter))
        self.ops += not same_op
        for hook in self.after_add:
            hook()


_recorder: ContextVar[Recorder | None] = ContextVar("embedpipe_kernel_recorder", default=None)


@contextmanager
def recording() -> Iterator[Recorder]:
    """Inside the block, forks on this thread (``Native.run``, ``KernelLibrary.fork``) are
    recorded, not run: drivers still validate and lay out their work, but no kernel executes
    and outputs stay unwritten."""
    rec = Recorder()
    token = _recorder.set(rec)
    try:
        yield rec
    finally:
        _recorder.reset(token)


def active_recorder() -> Recorder | None:
    """The recorder of an enclosing ``recording`` block on this thread, if any."""
    return _recorder.get()
