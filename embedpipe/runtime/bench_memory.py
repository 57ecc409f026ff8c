"""What `bench runtime` reports besides speed: weight bytes a forward streams, the machine's read
bandwidth (so the floor single-text latency can never beat), and native calls per forward.
Resident memory is each peer's own worker process's (``bench_worker.memory_mb``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


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
        from embedpipe.codegen.recorder import native_calls
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


__all__ = [
    "native_calls_per_forward",
    "read_bandwidth_gbs",
    "streamed_weight_bytes",
]
