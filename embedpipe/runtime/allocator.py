"""Allocator policy for forward passes: reuse freed activation memory instead of faulting in
fresh pages for every intermediate.

A forward pass allocates and frees megabytes of activations per layer (matmul outputs, Q/K/V,
attention output).  glibc serves such sizes from ``mmap`` (unmapped again on free) or from a
heap whose top it trims back to the OS, so the next layer's arrays arrive as fresh pages:
a page fault and a kernel zero-fill per 4 KiB, every layer.  ``keep_freed_memory`` raises the
trim threshold and fixes the mmap threshold at glibc's ceiling (32 MiB on 64-bit), so arrays
below it are recycled inside the process and larger ones (weights, index vectors) are still
mapped and returned whole.  The price: memory freed below the ceiling stays with the process
(its peak does not grow; it is not handed back until exit).  Other C libraries: nothing done.
"""

from __future__ import annotations

import ctypes
import sys
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_CEILING = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_applied: bool | None = None


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).mallopt  # the process's own C library (no ldconfig lookup)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Apply the policy once per process; whether glibc accepted it."""
    global _applied
    with _lock:
        if _applied is None:
            fn = _mallopt()
            _applied = (
                bool(fn) and bool(fn(M_MMAP_THRESHOLD, MMAP_CEILING)) and bool(fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            )
        return _applied
