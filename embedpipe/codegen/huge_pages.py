"""Huge-page memory for repacked weights: the kernels stream every weight once per forward
pass, and on 4 KiB pages that is a page walk per 4 KiB read.

Weights repacked in this process (no weight-cache hit, or the cache turned off) are packed
straight into anonymous chunks that carry the transparent-huge-page advice, carved 64-byte
aligned (``quant_formats.weight_empty``), so that each 2 MiB of them is one TLB entry.  Weights
mapped from the weight cache get the same advice on their mapping (``runtime.weight_cache``).
A chunk lives as long as an array carved from it; small requests, and platforms without the
advice, get no chunk memory.
"""

from __future__ import annotations

import logging
import mmap
import threading
import weakref

import numpy as np

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
CHUNK_BYTES = 32 << 20  # one mapping per this many bytes of weights
MIN_BYTES = 256 << 10  # smaller arrays stay where they are
ALIGN = 64

_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_lock = threading.Lock()
# the chunk being carved: the array over its whole mapping (weak: the arrays carved from it,
# numpy views whose base it is, keep it alive), the next free offset and the end
_chunk: weakref.ref | None = None
_used = _end = 0


def _new_chunk(nbytes: int) -> tuple[np.ndarray, int, int] | None:
    """An anonymous mapping as a uint8 array, and the huge-page-aligned, advised byte range
    ``[start, end)`` of it that holds at least ``nbytes`` (None on failure)."""
    size = -(-max(nbytes, CHUNK_BYTES) // HUGE_PAGE) * HUGE_PAGE
    try:
        region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(region, np.uint8)
        start = -whole.ctypes.data % HUGE_PAGE
        region.madvise(_ADVICE, start, size)
    except (OSError, ValueError) as exc:
        log.debug("no huge-page memory for weights: %s", exc)
        return None
    return whole, start, start + size


def carve(nbytes: int) -> np.ndarray | None:
    """``nbytes`` of huge-page memory as a 64-byte aligned uint8 array (zero-filled, untouched
    until written), or None for fewer than ``MIN_BYTES`` or without transparent huge pages."""
    global _chunk, _used, _end
    if _ADVICE is None or nbytes < MIN_BYTES:
        return None
    need = -(-nbytes // ALIGN) * ALIGN
    with _lock:
        whole = _chunk() if _chunk is not None else None
        if whole is None or _used + need > _end:
            fresh = _new_chunk(need)
            if fresh is None:
                return None
            whole, _used, _end = fresh
            _chunk = weakref.ref(whole)
        out = whole[_used : _used + nbytes]
        _used += need
    return out
