"""Per-thread scratch of the kernel drivers, in one registry.

A driver keeps its work buffers per calling thread, so steady-state calls allocate nothing and
two threads never share one. A step-program recording (``codegen.program``) must instead give
the drivers scratch of its own and keep it alive with the program: it swaps every registered
:class:`ThreadScratch` for a fresh one while it records. A module declares its scratch with
:func:`thread_scratch` at import, so the recorder needs to know no driver by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from embedpipe.codegen.quant_formats import aligned_empty


class ThreadScratch(threading.local):
    """``value``: this thread's scratch (``empty()`` until a driver sets it)."""

    def __init__(self, empty: Callable[[], object]) -> None:
        self.empty = empty
        self.value = empty()

    def floats(self, n: int) -> np.ndarray:
        """This thread's fp32 buffer of at least ``n`` floats (grown when too small, on a cache
        line)."""
        buf = self.value
        if not isinstance(buf, np.ndarray) or buf.size < n:
            buf = self.value = aligned_empty((n,), np.float32)
        return buf


REGISTRY: list[ThreadScratch] = []


def thread_scratch(empty: Callable[[], object]) -> ThreadScratch:
    """A module's per-thread scratch, registered for step-program recordings."""
    scratch = ThreadScratch(empty)
    REGISTRY.append(scratch)
    return scratch
