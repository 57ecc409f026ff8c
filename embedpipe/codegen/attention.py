"""Softmax attention of packed sequences: the driver of the tiled kernels.

Two kernels share one work table and one driver: ``ir_attention`` (fp32 vectors, every ISA)
and ``ir_attention_amx`` (q, k, v and the softmax weights rounded to bf16, products on the
tile unit; where the CPU has AMX-BF16, the OS grants it and the caller allows bf16, as a
model whose products already round activations to int8 does; ``EMBEDPIPE_TILE_UNITS=off``
keeps the fp32 one). ``select_native`` picks one per ISA and precision, so a model computes
every batch, and every text alone, with the same kernel. The driver plans the
work items (costliest first), checks every array, bound and output before the native call,
gives each thread its scratch, and records the call as a step whose work table each replay
rewrites. ``attention_reference`` is the numpy twin (plain softmax per sequence): oracle and
fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embedpipe.codegen import ir_attention_amx as tiles
from embedpipe.codegen.ir_attention import PARAMS, emit, scratch_floats
from embedpipe.codegen.ir_tiles import tile_target
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native, host_isa
from embedpipe.codegen.scratch import thread_scratch

QUERY_ROWS = 96  # query rows (positions × grouped heads) per work item of the fp32 kernel
# the tile kernel packs the keys and values an item sees once per item: larger items repack less
TILE_QUERY_ROWS = 192


def query_tile(group: int, rows: int = QUERY_ROWS) -> int:
    """Query positions per work item of ``rows`` query rows for ``group`` query heads per KV head."""
    return max(1, rows // group)


@dataclass(frozen=True)
class _Layout:
    """How a kernel takes its work: query rows per item, and its per-thread scratch (fp32
    words) with the parameters that follow the shared ones, for
    ``(isa, group, bq, d, dv, longest sequence)``."""

    rows: int
    scratch: Callable[[IsaSpec, int, int, int, int, int], tuple[int, tuple[int, ...]]]


def _tile_scratch(isa: IsaSpec, group: int, bq: int, d: int, dv: int, longest: int) -> tuple[int, tuple[int, ...]]:
    keys = tiles.key_capacity(longest)
    return -(-tiles.scratch_bytes(group, bq, d, dv, keys) // 4), (keys,)


_LAYOUTS = {
    "attention": _Layout(QUERY_ROWS, lambda isa, group, bq, d, dv, _: (scratch_floats(isa, group, bq, d, dv), ())),
    "attention_tiles": _Layout(TILE_QUERY_ROWS, _tile_scratch),
}


def item_rows(native: Native) -> int:
    """Query rows per work item of this kernel."""
    return _LAYOUTS[native.kernel.name].rows


def split_query_tile(bq: int, lengths: object, n_kv: int, half_window: int | None, threads: int) -> int:
    """``bq``, or smaller query tiles when a batch has fewer items than threads (one short
    text: one item, the other threads idle).  Only where every tile's key range is its whole
    sequence (no window, or sequences within it): then each query row walks the same keys in
    the same order whatever the tile, so its numbers do not change."""
    lengths = np.asarray(lengths).reshape(-1)
    items = lengths.size * n_kv
    if threads <= 1 or items >= threads or not items:
        return bq
    longest = int(lengths.max())
    if longest > bq or (half_window is not None and longest > half_window + 1):
        return bq
    parts = -(-threads // items)
    return max(1, -(-longest // parts))


def attention_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    half_window: int | None,
    threads: int = 1,
    cache: dict | None = None,
) -> np.ndarray:
    """numpy twin: plain softmax attention per sequence and KV head (float32, BLAS)."""
    s, n_q, _, n_kv, dv = _check_arrays(q, k, v)
    starts, lengths = _check_bounds(starts, lengths, s)
    group = n_q // n_kv
    out = np.empty((s, n_q, dv), np.float32)
    for a, t in zip(starts.tolist(), lengths.tolist()):
        idx = np.arange(t)
        far = None if half_window is None else np.abs(idx[:, None] - idx[None, :]) > half_window
        for h in range(n_kv):
            qs = q[a : a + t, h * group : (h + 1) * group].transpose(1, 0, 2)  # (G, T, D)
            scores = qs @ k[a : a + t, h].T
            if far is not None:
                scores[:, far] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[a : a + t, h * group : (h + 1) * group] = (scores @ v[a : a + t, h]).transpose(1, 0, 2)
    return out.reshape(s, n_q * dv)


def _check_arrays(q: object, k: object, v: object) -> tuple[int, int, int, int, int]:
    """Checks q (S, Hq, D), k (S, Hkv, D), v (S, Hkv, Dv); returns (S, Hq, D, Hkv, Dv)."""
    from embedpipe.codegen.library import KernelInputError

    for name, arr in (("q", q), ("k", k), ("v", v)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 3:
            raise KernelInputError(f"attention: {name} must be a 3-D float32 numpy array")
    s, n_q, d = q.shape
    if k.shape[0] != s or v.shape[0] != s or k.shape[2] != d or v.shape[1] != k.shape[1]:
        raise KernelInputError(f"attention: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    n_kv = k.shape[1]
    if n_kv == 0 or n_q % n_kv or d == 0 or v.shape[2] == 0:
        raise KernelInputError(f"attention: {n_q} query heads cannot share {n_kv} KV heads")
    return s, n_q, d, n_kv, v.shape[2]


def _check_bounds(starts: object, lengths: object, s: int) -> tuple[np.ndarray, np.ndarray]:
    from embedpipe.codegen.library import KernelInputError

    starts = np.asarray(starts, np.int64).reshape(-1)
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if starts.shape != lengths.shape:
        raise KernelInputError("attention: starts and lengths differ in length")
    if lengths.size and (lengths.min() < 1 or starts.min() < 0 or (starts + lengths).max() > s):
        raise KernelInputError(f"attention: sequence bounds outside the {s} packed rows")
    return starts, lengths


def plan_work(starts: np.ndarray, lengths: np.ndarray, n_kv: int, bq: int, half_window: int | None) -> np.ndarray:
    """Work items (sequence start, length, first query position, KV head), costliest first
    (the atomic claim then balances threads like longest-processing-time scheduling)."""
    tiles = -(-lengths // bq)
    seq = np.repeat(np.arange(len(lengths)), tiles)
    first = np.arange(int(tiles.sum())) - np.repeat(np.cumsum(tiles) - tiles, tiles)
    i0 = first * bq
    t = lengths[seq]
    span = (
        t
        if half_window is None
        else np.minimum(t, np.minimum(t, i0 + bq) + half_window) - np.maximum(0, i0 - half_window)
    )
    cost = np.minimum(bq, t - i0) * span
    order = np.argsort(-cost, kind="stable")
    items = np.stack([starts[seq], t, i0, np.zeros_like(i0)], axis=1)[order]
    work = np.repeat(items, n_kv, axis=0)
    work[:, 3] = np.tile(np.arange(n_kv), len(items))
    return np.ascontiguousarray(work, dtype=np.int64)


_scratch = thread_scratch(lambda: None)  # the workers' packed queries and score tiles


def _drive(
    native: Native,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    half_window: int | None,
    threads: int = 1,
    cache: dict | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    s, n_q, _, n_kv, dv = _check_arrays(q, k, v)
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    group = n_q // n_kv
    bq = split_query_tile(query_tile(group, item_rows(native)), lengths, n_kv, half_window, threads)
    if out is None:
        out = np.empty((s, n_q * dv), np.float32)
    else:
        _check_out(out, (s, n_q * dv), q, k, v)
    work = _planned_work(s, n_kv, bq, starts, lengths, half_window, cache)
    if not len(work):
        return out
    parts = max(1, min(int(threads), len(work)))
    counter = np.zeros(1, np.int64)
    longest = int(work[:, 1].max())
    native.run(
        _items(native, q, k, v, out, work.ctypes.data, len(work), counter.ctypes.data, half_window, bq, parts, longest)
    )
    return out


def _planned_work(s: int, n_kv: int, bq: int, starts, lengths, half_window: int | None, cache: dict | None):
    """The checked work table of these sequences (kept in ``cache`` when given)."""
    key = ("attention_work", s, n_kv, bq, half_window)
    work = None if cache is None else cache.get(key)
    if work is None:
        work = plan_work(*_check_bounds(starts, lengths, s), n_kv, bq, half_window)
        work.setflags(write=False)
        if cache is not None:
            cache[key] = work
    return work


def _items(
    native: Native,
    q,
    k,
    v,
    out,
    work: int,
    n_work: int,
    counter: int,
    half_window,
    bq: int,
    parts: int,
    longest: int,
) -> list[tuple]:
    """``parts`` items sharing one work table, each with its own scratch for tiles of ``bq``
    (the tile kernel's also for the key span of a sequence of up to ``longest`` rows)."""
    s, n_q, d = q.shape
    n_kv, dv = k.shape[1], v.shape[2]
    group = n_q // n_kv
    per_thread, tail = _LAYOUTS[native.kernel.name].scratch(native.isa, group, bq, d, dv, longest)
    base = _scratch.floats(per_thread * parts).ctypes.data
    hw = -1 if half_window is None else int(half_window)
    head = (q.ctypes.data, k.ctypes.data, v.ctypes.data, out.ctypes.data, work, n_work, counter)
    return [(*head, base + 4 * per_thread * i, group, n_q, n_kv, d, dv, hw, bq, *tail) for i in range(parts)]


_WORD = {name: i for i, (name, _) in enumerate(PARAMS)}


def record_per_run(
    native: Native, q: np.ndarray, k: np.ndarray, v: np.ndarray, half_window: int | None, threads: int, out: np.ndarray
) -> np.ndarray:
    """Inside a ``recorder.recording``: one attention step over these rows whose sequences are
    given anew by every replay (``Recorder.rewritten``), as its argument, a
    ``codegen.sequences.Sequences``. The
    replay plans and checks its work table as ``_drive`` does; ``threads`` items share it."""
    from embedpipe.codegen.library import KernelInputError
    from embedpipe.codegen.recorder import active_recorder

    rec = active_recorder()
    if rec is None:
        raise KernelInputError("attention: record_per_run outside a recording")
    s, n_q, _, n_kv, dv = _check_arrays(q, k, v)
    if not all(x.flags.c_contiguous for x in (q, k, v)):
        raise KernelInputError("attention: a recorded step takes C-contiguous q, k, v")
    _check_out(out, (s, n_q * dv), q, k, v)
    group, parts = n_q // n_kv, max(1, int(threads))
    largest = query_tile(group, item_rows(native))  # the scratch holds tiles of any bq a replay picks
    native.run(_items(native, q, k, v, out, 0, 0, 0, half_window, largest, parts, s))  # any replay's sequences fit

    def fill(plan, words: np.ndarray) -> np.ndarray:
        bq = split_query_tile(largest, plan.lengths, n_kv, half_window, parts)
        work = _planned_work(s, n_kv, bq, plan.starts, plan.lengths, half_window, plan.cache)
        words[:, _WORD["work"]], words[:, _WORD["n_work"]], words[:, _WORD["bq"]] = work.ctypes.data, len(work), bq
        return work

    rec.rewritten(fill)
    return out


ATTENTION = Kernel("attention", PARAMS, emit, twin=attention_reference, drive=_drive)
ATTENTION_MODULE = KernelModule("ep_attention", [ATTENTION])
ATTENTION_TILES = Kernel("attention_tiles", tiles.PARAMS, tiles.emit, twin=attention_reference, drive=_drive)
ATTENTION_TILES_MODULE = KernelModule("ep_attention_tiles", [ATTENTION_TILES])


def select_native(isa: IsaSpec, bf16: bool = False) -> Native | None:
    """The attention kernel for ``isa`` on this host: with ``bf16`` allowed, the tile kernel
    where it may run (``ir_tiles.tile_target``); else the fp32 one; None without LLVM."""
    target = tile_target(isa) if bf16 else None
    native = ATTENTION_TILES.native(target) if target is not None else None
    return native if native is not None else ATTENTION.native(isa)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    half_window: int | None,
    *,
    threads: int = 1,
    isa: IsaSpec | None = None,
    cache: dict | None = None,
    out: np.ndarray | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """softmax(q·kᵀ)·v of each packed sequence ``[starts[i], starts[i] + lengths[i])``, keys
    with |i − j| > ``half_window`` masked (None: all visible).

    q: (S, Hq, D) fp32, already scaled; k: (S, Hkv, D); v: (S, Hkv, Dv); Hq a multiple of
    Hkv.  Returns (S, Hq·Dv) fp32 (rows outside every sequence are left undefined).

    ``cache``: a dict that lives as long as ``starts``/``lengths`` stay unchanged (one packed
    batch); the validated work table is kept there, so the layers after the first skip
    planning.  ``threads`` items share the work (one native call).  ``out``: an optional
    (S, Hq·Dv) fp32 output buffer (not overlapping q, k, v). ``bf16``: q, k, v and the
    softmax weights may be rounded to bf16 (the tile kernel, where it runs; ``select_native``).
    """
    native = select_native(isa or host_isa(), bf16)
    if native is None:
        result = attention_reference(q, k, v, starts, lengths, half_window)
        if out is None:
            return result
        _check_out(out, result.shape, q, k, v)
        out[...] = result
        return out
    return _drive(native, q, k, v, starts, lengths, half_window, threads, cache, out)


def _check_out(out: object, shape: tuple[int, int], *inputs: np.ndarray) -> None:
    from embedpipe.codegen.library import KernelInputError

    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise KernelInputError(f"attention: out must be a float32 {shape} array")
    if not out.flags.c_contiguous or any(np.may_share_memory(out, a) for a in inputs):
        raise KernelInputError("attention: out must be C-contiguous and apart from q, k, v")
