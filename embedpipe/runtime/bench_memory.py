"""What `bench runtime` reports besides speed: resident memory, weight bytes a forward streams,
the machine's read bandwidth (so the floor single-text latency can never beat), and native
calls per forward."""

from __future__ import annotations

import gc
import resource
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``5`` into clear_refs resets VmHWM); False where
    the kernel does not allow it, and then ``peak_rss_mb`` is the process's lifetime peak."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set of this process since the last reset, MB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def children_peak_rss_mb() -> float:
    """Largest peak resident set of any child process waited for, MB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def measure_peak_rss(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` and the peak RSS (MB) of this process, or of its biggest new child (peers
    that run in a subprocess), during it."""
    reset_peak_rss()
    children = children_peak_rss_mb()
    result = run()
    child = children_peak_rss_mb()
    return result, child if child > children else peak_rss_mb()


def _arrays(value: Any) -> Iterable[np.ndarray]:
    packed = getattr(value, "packed", None)
    if packed is not None:  # a PreparedMatmul
        yield from (a for a in packed if isinstance(a, np.ndarray))
        return
    for cell in getattr(value, "__closure__", None) or ():  # a backend's matmul closure
        contents = cell.cell_contents
        if isinstance(contents, np.ndarray) and contents.ndim == 2:
            yield contents


def streamed_weight_bytes(model: Any) -> int:
    """Bytes of prepared matmul weights one forward reads once each (layers and head), as the
    backend holds them; the token-embedding rows a text gathers are negligible."""
    seen: set[int] = set()
    total = 0
    holders = [*getattr(model, "layers", []), model]
    values = [v for h in holders for v in vars(h).values()]
    values += [v for v in getattr(model, "dense", [])]
    for value in values:
        for arr in _arrays(value):
            if arr.ctypes.data not in seen:
                seen.add(arr.ctypes.data)
                total += arr.nbytes
    return total


def native_calls_per_forward(embedder: Any, text: str) -> int | None:
    """Calls into compiled code for one forward of ``text`` (None without the counter)."""
    try:
        from embedpipe.codegen.kernel import native_calls
    except ImportError:
        return None
    ids = embedder.tokenize([text], task="none")
    embedder.encode_ids(ids)
    before = native_calls()
    embedder.encode_ids(ids)
    return native_calls() - before


def read_bandwidth_gbs(threads: int) -> float | None:
    """Memory-read GB/s of ``threads`` threads (None when the probe cannot run)."""
    try:
        from embedpipe.codegen.bandwidth import read_bandwidth

        return read_bandwidth(threads)
    except Exception:  # no usable LLVM target: the floor is simply not reported
        return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024


__all__ = [
    "children_peak_rss_mb",
    "measure_peak_rss",
    "native_calls_per_forward",
    "peak_rss_mb",
    "read_bandwidth_gbs",
    "reset_peak_rss",
    "rss_mb",
    "streamed_weight_bytes",
]
