"""Bidirectional attention of packed sequences over their real tokens: the driver of the
BERT family's attention kernel (``ir_encoder_attention``).

It checks the QKV product, bias, sequences and output before the native call, spreads the
(sequence, head) pairs over the threads by their work (``balanced_ranges``), gives each
worker its scratch, and records the call as a step whose sequences each replay rewrites.
``attention_reference`` is the numpy twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedpipe.codegen.encoder_fused import (
    address,
    cached_f32_word,
    checked_out,
    combine_reference,
    row_ranges,
)
from embedpipe.codegen.ir_encoder_attention import PARAMS, emit, scratch_floats
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.library import KernelInputError
from embedpipe.codegen.recorder import active_recorder
from embedpipe.codegen.scratch import thread_scratch
from embedpipe.codegen.sequences import Sequences

# Score-row work (pairs · T² · head_dim) below which a call runs on the calling thread.
PARALLEL_MIN_WORK = 1 << 20
# Per-query-row work of a pair besides its n keys (gathers, transposes, softmax), in key units:
# what ``balanced_ranges`` adds to n when it weighs an n-token sequence's pairs.
PAIR_OVERHEAD = 16


def attention_reference(
    qkv: np.ndarray,
    n_head: int,
    head_dim: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    scale: float,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """numpy twin: (S, H·D) softmax(scale·q·kᵀ + bias)·v per sequence and head."""
    hidden = n_head * head_dim
    out = np.zeros((qkv.shape[0], hidden), np.float32)
    for st, n in zip(starts.tolist(), lengths.tolist()):
        blk = qkv[st : st + n]
        q = blk[:, :hidden].reshape(n, n_head, head_dim).transpose(1, 0, 2)
        k = blk[:, hidden : 2 * hidden].reshape(n, n_head, head_dim).transpose(1, 2, 0)
        v = blk[:, 2 * hidden : 3 * hidden].reshape(n, n_head, head_dim).transpose(1, 0, 2)
        s = (q @ k) * np.float32(scale)
        if bias is not None:
            s = s + bias[:, :n, :n]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        out[st : st + n] = (s @ v).transpose(1, 0, 2).reshape(n, hidden)
    return out


def _checked(y, qkv_bias, t, n_head, head_dim, starts, lengths, bias):
    if not isinstance(y, np.ndarray) or y.dtype != np.float32 or y.ndim != 2:
        raise KernelInputError("encoder attention: the QKV product must be a 2-D float32 array")
    t = int(t)
    if t < 0 or y.shape[0] != t:
        raise KernelInputError(f"encoder attention: product {y.shape} does not hold {t} rows")
    if n_head < 1 or head_dim < 1 or y.shape[1] < 3 * n_head * head_dim:
        raise KernelInputError(f"encoder attention: product {y.shape} holds no {n_head}×{head_dim} q, k and v")
    if not isinstance(qkv_bias, np.ndarray) or qkv_bias.dtype != np.float32 or qkv_bias.shape != (y.shape[1],):
        raise KernelInputError(f"encoder attention: the QKV bias must be float32 ({y.shape[1]},)")
    starts = np.ascontiguousarray(starts, np.int64)
    lengths = np.ascontiguousarray(lengths, np.int64)
    if starts.shape != lengths.shape or starts.ndim != 1:
        raise KernelInputError("encoder attention: starts and lengths must be 1-D and of equal length")
    if starts.size and ((lengths < 1).any() or (starts < 0).any() or (starts + lengths > t).any()):
        raise KernelInputError(f"encoder attention: a sequence lies outside the {t} rows")
    if bias is not None:
        longest = int(lengths.max()) if lengths.size else 0
        if (
            not isinstance(bias, np.ndarray)
            or bias.dtype != np.float32
            or bias.ndim != 3
            or bias.shape[0] != n_head
            or bias.shape[1] != bias.shape[2]
            or bias.shape[1] < longest
        ):
            raise KernelInputError(f"encoder attention: bias must be float32 ({n_head}, L, L) with L >= {longest}")
        bias = np.ascontiguousarray(bias)
    return np.ascontiguousarray(y), np.ascontiguousarray(qkv_bias), t, starts, lengths, bias


def balanced_ranges(lengths: Sequence[int], n_head: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the (sequence, head) pairs, one per part, of about equal work: a
    pair of an n-token sequence costs ~n·(n + PAIR_OVERHEAD). A batch's sequences come sorted
    by length, so equal pair counts would leave the first worker idle for the last one.
    (Plain Python: a pass holds a few dozen sequences, where numpy's per-call cost dominates.)"""
    pairs = len(lengths) * n_head
    if parts <= 1 or pairs <= 1:
        return row_ranges(pairs, 1)
    per_pair = [n * (n + PAIR_OVERHEAD) for n in lengths]
    total = sum(per_pair) * n_head
    bounds, k, done = [0], 1, 0
    for seq, work in enumerate(per_pair):
        end = done + work * n_head
        while k < parts and total * k <= end * parts:  # the k-th share ends in this sequence
            cut = seq * n_head + round((total * k / parts - done) / work)
            bounds.append(min(max(cut, bounds[-1]), pairs))
            k += 1
        done = end
    bounds.append(pairs)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]


_scratch = thread_scratch(lambda: None)  # the workers' score rows


def _drive(native: Native, y, qkv_bias, t, n_head, head_dim, starts, lengths, scale, bias=None, threads=1, out=None):
    """``out``: an optional (T, H·D) float32 buffer apart from the inputs; rows outside every
    sequence are left as they are (zero in a fresh one)."""
    y, qkv_bias, t, starts, lengths, bias = _checked(y, qkv_bias, t, n_head, head_dim, starts, lengths, bias)
    if out is None:
        out = np.zeros((t, n_head * head_dim), np.float32)
    else:
        out = checked_out("encoder attention", out, (t, n_head * head_dim), y, qkv_bias, starts, lengths, bias)
    pairs = starts.size * n_head
    if not pairs:
        return out
    lens = lengths.tolist()
    longest = max(lens)
    work = sum(n * n for n in lens) * n_head * head_dim
    ranges = balanced_ranges(lens, n_head, threads if work >= PARALLEL_MIN_WORK else 1)
    per_worker = scratch_floats(head_dim, longest, native.isa.lanes)
    scratch = _scratch.floats(len(ranges) * per_worker)
    head = (address(y), address(qkv_bias), address(bias) if bias is not None else 0, address(out))
    tail = (address(starts), address(lengths), t, n_head, head_dim, y.shape[1])
    ld = bias.shape[1] if bias is not None else 0
    native.run(
        [
            (*head, address(scratch) + 4 * per_worker * i, *tail, ld, cached_f32_word(float(scale)), a, b)
            for i, (a, b) in enumerate(ranges)
        ]
    )
    return out


_WORD = {name: i for i, (name, _) in enumerate(PARAMS)}


def record_per_run(
    native: Native,
    y: np.ndarray,
    qkv_bias: np.ndarray,
    n_head: int,
    head_dim: int,
    scale: float,
    longest: int,
    threads: int,
    out: np.ndarray,
) -> np.ndarray:
    """Inside a ``recorder.recording``: one attention step over ``y``'s rows whose sequences are
    given anew by every replay (``Recorder.rewritten``), as its argument, a ``Sequences`` of
    at most ``longest`` tokens each. The replay checks them as ``_drive`` does and spreads
    their pairs over ``threads`` items; ``out`` (T, H·D) must be given."""
    rec = active_recorder()
    if rec is None:
        raise KernelInputError("encoder attention: record_per_run outside a recording")
    none = np.zeros(0, np.int64)
    y, qkv_bias, t, _, _, _ = _checked(y, qkv_bias, y.shape[0], n_head, head_dim, none, none, None)
    out = checked_out("encoder attention", out, (t, n_head * head_dim), y, qkv_bias)
    longest, parts = max(1, int(longest)), max(1, int(threads))
    per_worker = scratch_floats(head_dim, longest, native.isa.lanes)
    scratch = _scratch.floats(parts * per_worker)
    head = (address(y), address(qkv_bias), 0, address(out))
    tail = (0, 0, t, n_head, head_dim, y.shape[1], 0, cached_f32_word(float(scale)), 0, 0)
    native.run([(*head, address(scratch) + 4 * per_worker * i, *tail) for i in range(parts)])

    def plan(seqs: Sequences) -> tuple:
        _, _, _, starts, lengths, bias = _checked(
            y, qkv_bias, t, n_head, head_dim, seqs.starts, seqs.lengths, seqs.bias
        )
        lens = lengths.tolist()
        if lens and max(lens) > longest:
            raise KernelInputError(f"encoder attention: a sequence of {max(lens)} tokens; this step holds {longest}")
        work = sum(n * n for n in lens) * n_head * head_dim
        ranges = balanced_ranges(lens, n_head, parts if work >= PARALLEL_MIN_WORK else 1) if lens else []
        return starts, lengths, bias, ranges

    def fill(seqs: Sequences, words: np.ndarray) -> tuple:
        key = ("encoder_attention", t, n_head, head_dim, qkv_bias.size, parts, longest)
        planned = seqs.cache.get(key)
        if planned is None:
            planned = seqs.cache[key] = plan(seqs)
        starts, lengths, bias, ranges = planned
        words[:, _WORD["p0"]] = words[:, _WORD["p1"]] = 0
        for i, (a, b) in enumerate(ranges):
            words[i, _WORD["p0"]], words[i, _WORD["p1"]] = a, b
        words[:, _WORD["starts"]], words[:, _WORD["lengths"]] = address(starts), address(lengths)
        words[:, _WORD["bias"]] = address(bias) if bias is not None else 0
        words[:, _WORD["bias_ld"]] = bias.shape[1] if bias is not None else 0
        return planned

    rec.rewritten(fill)
    return out


def _twin(y, qkv_bias, t, n_head, head_dim, starts, lengths, scale, bias=None, threads=1, out=None):
    y, qkv_bias, t, starts, lengths, bias = _checked(y, qkv_bias, t, n_head, head_dim, starts, lengths, bias)
    qkv = combine_reference(y, qkv_bias, False)
    result = attention_reference(qkv, n_head, head_dim, starts, lengths, scale, bias)
    if out is None:
        return result
    out[...] = result
    return out


ENCODER_ATTENTION = Kernel("encoder_attention", PARAMS, emit, twin=_twin, drive=_drive)
ENCODER_ATTENTION_MODULE = KernelModule("ep_encoder_attention", [ENCODER_ATTENTION])
