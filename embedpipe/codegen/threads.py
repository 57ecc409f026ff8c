"""Thread-count policy and work splitting for every kernel that runs on the native pool."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from embedpipe.errors import EmbedpipeError

THREADS_ENV = "EMBEDPIPE_THREADS"
# Bytes per cache line on every supported CPU: per-thread output slices start on one (outputs
# allocated line-aligned, split points multiples of it), so no two threads write the same line.
CACHE_LINE = 64
# Values (rows x width) below which a row-wise op runs whole on the calling thread: handing a
# smaller one to the pool costs more than it saves.
MIN_PARALLEL_ELEMENTS = 1 << 16


def row_parts(threads: int, elements: int) -> int:
    """Items a row-wise op over ``elements`` values splits into: one per thread, or one."""
    return threads if elements >= MIN_PARALLEL_ELEMENTS else 1


# A thread count set for the work done inside ``using_threads`` (per thread / asyncio task).
_scoped: contextvars.ContextVar[int | None] = contextvars.ContextVar("embedpipe_threads", default=None)


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """Kernels called inside split their work ``threads`` ways (None: ``default_threads()`` as
    before): a caller's thread count without changing the process environment."""
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise EmbedpipeError(f"threads must be a positive integer, got {threads!r}")
    token = _scoped.set(None if threads is None else int(threads))
    try:
        yield
    finally:
        _scoped.reset(token)


def default_threads() -> int:
    """The count set by an enclosing ``using_threads``, else ``$EMBEDPIPE_THREADS``, else the
    number of cores this process may run on."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    env = os.environ.get(THREADS_ENV)
    if env:
        try:
            value = int(env)
        except ValueError:
            raise EmbedpipeError(f"{THREADS_ENV} must be a positive integer, got {env!r}") from None
        if value < 1:
            raise EmbedpipeError(f"{THREADS_ENV} must be a positive integer, got {env!r}")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def split_range(start: int, stop: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Split ``[start, stop)`` into at most ``parts`` non-empty ranges aligned to ``multiple``."""
    units = -(-(stop - start) // multiple)
    parts = max(1, min(parts, units))
    bounds = [start + (units * i // parts) * multiple for i in range(parts)] + [stop]
    return [(a, min(b, stop)) for a, b in zip(bounds, bounds[1:]) if a < min(b, stop)]
