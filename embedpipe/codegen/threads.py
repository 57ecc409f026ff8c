"""Thread-count policy and work splitting for every kernel that runs on the native pool."""

from __future__ import annotations

import os

from embedpipe.errors import EmbedpipeError

THREADS_ENV = "EMBEDPIPE_THREADS"
# Bytes per cache line on every supported CPU: per-thread output slices start on one (outputs
# allocated line-aligned, split points multiples of it), so no two threads write the same line.
CACHE_LINE = 64


def default_threads() -> int:
    """``$EMBEDPIPE_THREADS`` or the number of cores this process may run on."""
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
