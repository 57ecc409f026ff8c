"""Bidirectional attention of packed sequences over their real tokens, one native call per layer.

For every (sequence, head) pair and query row: scores against the sequence's keys (``scale``
times ``q·k``, plus an optional additive per-head bias such as MPNet's relative position bias),
softmax, and the probability-weighted sum of values, written straight into the output row.
Only one row of scores per worker exists at a time (never T×T). Keys are read transposed
(``kT``: heads × head_dim × tokens, made by the caller), so a score row is ``head_dim``
vector FMAs over consecutive keys.

``q``/``k``/``v`` are column blocks of one fused projection ``qkv`` (tokens × row stride): q at
column 0, k at ``hidden``, v at ``2·hidden``, head ``h`` at ``h·head_dim`` within each block.
Model-agnostic: a sequence is a range of rows; ``attention_reference`` is the numpy twin.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.ir_elementwise import _fconst, emit_exp
from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    const_i64,
    for_range,
    hmax_tree,
    hsum_tree,
    load_at,
    splat,
    store_at,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native, f32_word
from embedpipe.codegen.library import KernelInputError
from embedpipe.codegen.threads import split_range

# Score-row work (pairs · T² · head_dim) below which a call runs on the calling thread.
PARALLEL_MIN_WORK = 1 << 20
# Independent accumulators of a score vector (hides FMA latency).
CHAINS = 4

PARAMS = [
    ("qkv", PTR),
    ("kT", PTR),
    ("bias", PTR),
    ("out", PTR),
    ("scratch", PTR),
    ("starts", PTR),
    ("lengths", PTR),
    ("S", I64),
    ("H", I64),
    ("D", I64),
    ("stride", I64),
    ("bias_ld", I64),  # 0: no bias; else bias is (H, bias_ld, bias_ld)
    ("scale_bits", I64),  # fp32 bits in the low word
    ("p0", I64),
    ("p1", I64),
]


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    qkv, kT, bias, out, scratch, starts, lengths, S, H, D, stride, bias_ld, scale_bits, p0, p1 = b.function.args
    m = b.module
    w = isa.lanes
    four = const_i64(4)
    scale = b.bitcast(b.trunc(scale_bits, I32), F32)
    hidden = b.mul(H, D)
    SP = b.add(S, const_i64(w))  # kT row length: the tokens plus one vector of zero padding
    acc = b.alloca(vec(F32, w))
    parts = [b.alloca(vec(F32, w)) for _ in range(CHAINS)]
    wparts = {True: [b.alloca(vec(F32, w)) for _ in range(2)], False: [b.alloca(vec(F32, 1)) for _ in range(2)]}
    has_bias = b.icmp_signed("!=", bias_ld, const_i64(0))

    def chunks(n: ir.Value, tag: str, body) -> None:
        """``body(ty, j)`` over [0, n): w-lane vectors, then single lanes."""
        vstop = b.sub(n, b.srem(n, const_i64(w)))
        with for_range(b, const_i64(0), vstop, w, tag) as j:
            body(vec(F32, w), j)
        with for_range(b, vstop, n, 1, tag + "t") as j:
            body(vec(F32, 1), j)

    with for_range(b, p0, p1, 1, "pair") as pair:
        seq = b.sdiv(pair, H)
        h = b.srem(pair, H)
        st = load_at(b, I64, starts, b.mul(seq, const_i64(8)), 8)
        n = load_at(b, I64, lengths, b.mul(seq, const_i64(8)), 8)
        hd = b.mul(h, D)
        with for_range(b, const_i64(0), n, 1, "qi") as i:
            row = b.add(st, i)
            qoff = b.mul(b.add(b.mul(row, stride), hd), four)
            brow = b.mul(b.add(b.mul(h, bias_ld), i), bias_ld)

            # whole w-lane vectors of keys: lanes past the sequence read kT's padding columns
            # (or the next sequence's keys) and are then set to -3e38 so softmax ignores them
            nvec = b.mul(b.sdiv(b.add(n, const_i64(w - 1)), const_i64(w)), const_i64(w))
            vt = vec(F32, w)
            with for_range(b, const_i64(0), nvec, w, "sc") as j:
                kcol = b.add(st, j)

                def qk(d: ir.Value) -> ir.Value:
                    qd = load_at(b, F32, qkv, b.add(qoff, b.mul(d, four)), 4)
                    kv = load_at(b, vt, kT, b.mul(b.add(b.mul(b.add(hd, d), SP), kcol), four), 4)
                    return b.fmul(splat(b, qd, w), kv)

                # CHAINS independent partial sums over d: FMA latency, not a single chain, bounds it
                for slot in parts:
                    b.store(ir.Constant(vt, None), slot)
                dstop = b.sub(D, b.srem(D, const_i64(CHAINS)))
                with for_range(b, const_i64(0), dstop, CHAINS, "d") as d:
                    for c, slot in enumerate(parts):
                        b.store(b.fadd(b.load(slot), qk(b.add(d, const_i64(c)))), slot)
                with for_range(b, dstop, D, 1, "dt") as d:
                    b.store(b.fadd(b.load(parts[0]), qk(d)), parts[0])
                total_v = b.load(parts[0])
                for slot in parts[1:]:
                    total_v = b.fadd(total_v, b.load(slot))
                store_at(b, b.fmul(total_v, splat(b, scale, w)), scratch, b.mul(j, four), 4)
            with b.if_then(has_bias):

                def add_bias(ty: ir.Type, j: ir.Value) -> None:
                    off = b.mul(j, four)
                    bv = load_at(b, ty, bias, b.mul(b.add(brow, j), four), 4)
                    store_at(b, b.fadd(load_at(b, ty, scratch, off, 4), bv), scratch, off, 4)

                chunks(n, "bi", add_bias)
            with for_range(b, n, nvec, 1, "pad") as j:
                store_at(b, ir.Constant(F32, -3.0e38), scratch, b.mul(j, four), 4)
            b.store(_fconst(vt, -3.0e38), acc)
            with for_range(b, const_i64(0), nvec, w, "mx") as j:
                v = load_at(b, vt, scratch, b.mul(j, four), 4)
                cur = b.load(acc)
                b.store(b.select(b.fcmp_ordered(">", v, cur), v, cur), acc)
            mx = hmax_tree(b, b.load(acc))
            b.store(ir.Constant(vt, None), acc)
            with for_range(b, const_i64(0), nvec, w, "ex") as j:
                off = b.mul(j, four)
                e = emit_exp(b, m, b.fsub(load_at(b, vt, scratch, off, 4), splat(b, mx, w)))
                store_at(b, e, scratch, off, 4)
                b.store(b.fadd(b.load(acc), e), acc)
            total = hsum_tree(b, b.load(acc))
            inv = b.fdiv(ir.Constant(F32, 1.0), total)
            ooff = b.mul(b.add(b.mul(row, hidden), hd), four)

            def weighted(ty: ir.Type, dc: ir.Value) -> None:
                lanes = ty.count
                slots = wparts[lanes == w]
                for slot in slots:
                    b.store(ir.Constant(ty, None), slot)
                vcol = b.add(b.add(b.mul(hidden, const_i64(2)), hd), dc)

                def pv(j: ir.Value) -> ir.Value:
                    p = load_at(b, F32, scratch, b.mul(j, four), 4)
                    vv = load_at(b, ty, qkv, b.mul(b.add(b.mul(b.add(st, j), stride), vcol), four), 4)
                    return b.fmul(splat(b, p, lanes), vv)

                jstop = b.sub(n, b.srem(n, const_i64(2)))
                with for_range(b, const_i64(0), jstop, 2, "j") as j:
                    b.store(b.fadd(b.load(slots[0]), pv(j)), slots[0])
                    b.store(b.fadd(b.load(slots[1]), pv(b.add(j, const_i64(1)))), slots[1])
                with for_range(b, jstop, n, 1, "jt") as j:
                    b.store(b.fadd(b.load(slots[0]), pv(j)), slots[0])
                total_v = b.fadd(b.load(slots[0]), b.load(slots[1]))
                store_at(b, b.fmul(total_v, splat(b, inv, lanes)), out, b.add(ooff, b.mul(dc, four)), 4)

            chunks(D, "dv", weighted)
    b.ret_void()


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


def _checked(qkv, n_head, head_dim, starts, lengths, bias):
    if not isinstance(qkv, np.ndarray) or qkv.dtype != np.float32 or qkv.ndim != 2:
        raise KernelInputError("encoder attention: qkv must be a 2-D float32 array")
    if n_head < 1 or head_dim < 1 or qkv.shape[1] < 3 * n_head * head_dim:
        raise KernelInputError(f"encoder attention: qkv {qkv.shape} holds no {n_head}×{head_dim} q, k and v")
    starts = np.ascontiguousarray(starts, np.int64)
    lengths = np.ascontiguousarray(lengths, np.int64)
    if starts.shape != lengths.shape or starts.ndim != 1:
        raise KernelInputError("encoder attention: starts and lengths must be 1-D and of equal length")
    if starts.size and ((lengths < 1).any() or (starts < 0).any() or (starts + lengths > qkv.shape[0]).any()):
        raise KernelInputError(f"encoder attention: a sequence lies outside the {qkv.shape[0]} rows")
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
    return np.ascontiguousarray(qkv), starts, lengths, bias


def _drive(native: Native, qkv, n_head, head_dim, starts, lengths, scale, bias=None, threads=1):
    qkv, starts, lengths, bias = _checked(qkv, n_head, head_dim, starts, lengths, bias)
    s, hidden = qkv.shape[0], n_head * head_dim
    out = np.zeros((s, hidden), np.float32)
    pairs = starts.size * n_head
    if not pairs:
        return out
    lanes = native.isa.lanes
    kT = np.zeros((n_head, head_dim, s + lanes), np.float32)
    kT[:, :, :s] = qkv[:, hidden : 2 * hidden].reshape(s, n_head, head_dim).transpose(1, 2, 0)
    longest = -(-int(lengths.max()) // lanes) * lanes
    work = int((lengths.astype(np.float64) ** 2).sum()) * n_head * head_dim
    ranges = split_range(0, pairs, threads if work >= PARALLEL_MIN_WORK else 1)
    scratch = np.empty((len(ranges), longest), np.float32)
    head = (qkv.ctypes.data, kT.ctypes.data, bias.ctypes.data if bias is not None else 0, out.ctypes.data)
    tail = (starts.ctypes.data, lengths.ctypes.data, s, n_head, head_dim, qkv.shape[1])
    ld = bias.shape[1] if bias is not None else 0
    native.run(
        [
            (*head, scratch.ctypes.data + 4 * longest * i, *tail, ld, f32_word(scale), a, b)
            for i, (a, b) in enumerate(ranges)
        ]
    )
    return out


def _twin(qkv, n_head, head_dim, starts, lengths, scale, bias=None, threads=1):
    qkv, starts, lengths, bias = _checked(qkv, n_head, head_dim, starts, lengths, bias)
    return attention_reference(qkv, n_head, head_dim, starts, lengths, scale, bias)


ENCODER_ATTENTION = Kernel("encoder_attention", PARAMS, _emit, twin=_twin, drive=_drive)
ENCODER_ATTENTION_MODULE = KernelModule("ep_encoder_attention", [ENCODER_ATTENTION])
