"""Bidirectional attention of packed sequences over their real tokens, one native call per layer.

For every (sequence, head) pair and block of ``ROWS`` query rows: scores against the sequence's
keys (``scale`` times ``q·k``, plus an optional additive per-head bias such as MPNet's relative
position bias), softmax, and the probability-weighted sum of values, written straight into the
output rows. Per worker, only the pair's keys transposed (``head_dim`` × tokens, so a block of
scores is ``head_dim`` steps of one key-vector load feeding ``ROWS`` FMAs) and ``ROWS`` rows of
scores exist at a time (never T×T); a block of outputs likewise loads each value vector once
for ``ROWS`` rows.

The input is the fused QKV product ``y`` (T rows) before its bias; each (sequence, head) pair
gathers its q, k and v from it, bias added, into worker scratch, so the biased T × 3·hidden
array is never written. Within a row: q at column 0, k at
``hidden``, v at ``2·hidden``, head ``h`` at ``h·head_dim`` within each block.
Model-agnostic: a sequence is a range of rows; ``attention_reference`` is the numpy twin.
"""

from __future__ import annotations

import threading

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.encoder_fused import address, cached_f32_word, checked_out, combine_reference, row_ranges
from embedpipe.codegen.ir_elementwise import _fconst, emit_exp
from embedpipe.codegen.irutil import (
    F32,
    I32,
    I64,
    PTR,
    const_i64,
    fmuladd,
    for_range,
    hmax_tree,
    hsum_tree,
    load_at,
    splat,
    store_at,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.library import KernelInputError
from embedpipe.codegen.quant_formats import aligned_empty

# Score-row work (pairs · T² · head_dim) below which a call runs on the calling thread.
PARALLEL_MIN_WORK = 1 << 20
# Query rows handled together: each key (score step) and value (output step) vector loaded once
# feeds ROWS independent FMA chains, and the softmax of the ROWS rows runs interleaved (ROWS
# independent exp chains per step), so neither loads nor latency bound the loops.
ROWS = 8
NEG = -3.0e38  # score of a lane past the sequence: below every real score, exp gives 0

PARAMS = [
    ("y", PTR),  # the QKV product: T rows
    ("qkv_bias", PTR),
    ("bias", PTR),
    ("out", PTR),
    ("scratch", PTR),  # per worker: scratch_floats(D, longest, lanes) fp32
    ("starts", PTR),
    ("lengths", PTR),
    ("T", I64),
    ("H", I64),
    ("D", I64),
    ("stride", I64),
    ("bias_ld", I64),  # 0: no bias; else bias is (H, bias_ld, bias_ld)
    ("scale_bits", I64),  # fp32 bits in the low word
    ("p0", I64),
    ("p1", I64),
]


def scratch_floats(head_dim: int, longest: int, lanes: int) -> int:
    """fp32 scratch one worker needs: a head's keys transposed (head_dim × L), its queries,
    values and keys (L × head_dim each) and ROWS score rows (ROWS × L), L the longest sequence
    rounded up to whole vectors."""
    padded = -(-longest // lanes) * lanes
    return (4 * head_dim + ROWS) * padded


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    y, qkv_bias, bias, out, scratch, starts, lengths, T, H, D, stride, bias_ld, scale_bits, p0, p1 = b.function.args
    m = b.module
    w = isa.lanes
    vt = vec(F32, w)
    four = const_i64(4)
    scale = b.bitcast(b.trunc(scale_bits, I32), F32)
    hidden = b.mul(H, D)
    accs = {n: [b.alloca(vec(F32, n)) for _ in range(ROWS)] for n in (w, 1)}
    stats = [b.alloca(vt) for _ in range(ROWS)]
    inv = [b.alloca(F32) for _ in range(ROWS)]
    has_bias = b.icmp_signed("!=", bias_ld, const_i64(0))

    def combined(ty: ir.Type, row: ir.Value, col: ir.Value) -> ir.Value:
        """y[row, col:] + qkv_bias[col:], ``ty`` lanes."""
        off = b.mul(b.add(b.mul(row, stride), col), four)
        return b.fadd(load_at(b, ty, y, off, 4), load_at(b, ty, qkv_bias, b.mul(col, four), 4))

    iota = ir.Constant(vec(I64, w), list(range(w)))

    def chunks(n: ir.Value, tag: str, body) -> None:
        """``body(ty, j)`` over [0, n): w-lane vectors, then single lanes."""
        vstop = b.sub(n, b.srem(n, const_i64(w)))
        with for_range(b, const_i64(0), vstop, w, tag) as j:
            body(vt, j)
        with for_range(b, vstop, n, 1, tag + "t") as j:
            body(vec(F32, 1), j)

    with for_range(b, p0, p1, 1, "pair") as pair:
        seq = b.sdiv(pair, H)
        h = b.srem(pair, H)
        st = load_at(b, I64, starts, b.mul(seq, const_i64(8)), 8)
        n = load_at(b, I64, lengths, b.mul(seq, const_i64(8)), 8)
        hd = b.mul(h, D)
        last = b.sub(n, const_i64(1))
        nvec = b.mul(b.sdiv(b.add(n, const_i64(w - 1)), const_i64(w)), const_i64(w))
        # scratch: kT (D × nvec), q, v and k (nvec × D each), then ROWS score rows
        block = b.mul(b.mul(D, nvec), four)
        q_at, v_at, k_at = block, b.mul(block, const_i64(2)), b.mul(block, const_i64(3))
        scores_at = b.mul(block, const_i64(4))

        # this head's q, k, v gathered from the product (bias added), in whole
        # vectors along d; then the keys transposed (d-major), zero past the sequence
        kcol, vcol = b.add(hidden, hd), b.add(b.mul(hidden, const_i64(2)), hd)
        with for_range(b, const_i64(0), n, 1, "gj") as j:
            row = b.add(st, j)
            rowoff = b.mul(b.mul(j, D), four)

            def gather(ty: ir.Type, d: ir.Value, row=row, rowoff=rowoff) -> None:
                doff = b.add(rowoff, b.mul(d, four))
                store_at(b, combined(ty, row, b.add(hd, d)), scratch, b.add(q_at, doff), 4)
                store_at(b, combined(ty, row, b.add(kcol, d)), scratch, b.add(k_at, doff), 4)
                store_at(b, combined(ty, row, b.add(vcol, d)), scratch, b.add(v_at, doff), 4)

            chunks(D, "gd", gather)
        with for_range(b, const_i64(0), nvec, 1, "kj") as j:
            inside = b.icmp_signed("<", j, n)
            src = b.add(k_at, b.mul(b.mul(j, D), four))
            with for_range(b, const_i64(0), D, 1, "kd") as d:
                kv = b.select(inside, load_at(b, F32, scratch, b.add(src, b.mul(d, four)), 4), ir.Constant(F32, 0.0))
                store_at(b, kv, scratch, b.mul(b.add(b.mul(d, nvec), j), four), 4)

        with for_range(b, const_i64(0), n, ROWS, "qi") as i0:
            # rows past the sequence repeat its last row; their results are not stored
            qis = []
            for r in range(ROWS):
                i = b.add(i0, const_i64(r))
                qis.append(b.select(b.icmp_signed("<", i, n), i, last))
            qoffs = [b.add(q_at, b.mul(b.mul(qi, D), four)) for qi in qis]
            srows = [b.add(scores_at, b.mul(b.mul(const_i64(r), nvec), four)) for r in range(ROWS)]

            with for_range(b, const_i64(0), nvec, w, "sc") as j:
                for slot in accs[w]:
                    b.store(ir.Constant(vt, None), slot)
                with for_range(b, const_i64(0), D, 1, "d") as d:
                    kv = load_at(b, vt, scratch, b.mul(b.add(b.mul(d, nvec), j), four), 4)
                    doff = b.mul(d, four)
                    for qoff, slot in zip(qoffs, accs[w]):
                        qd = splat(b, load_at(b, F32, scratch, b.add(qoff, doff), 4), w)
                        b.store(fmuladd(b, m, qd, kv, b.load(slot)), slot)
                # lanes past the sequence score NEG
                valid = b.icmp_signed("<", b.add(splat(b, j, w), iota), splat(b, n, w))
                joff = b.mul(j, four)
                for srow, slot in zip(srows, accs[w]):
                    sv = b.select(valid, b.fmul(b.load(slot), splat(b, scale, w)), _fconst(vt, NEG))
                    store_at(b, sv, scratch, b.add(srow, joff), 4)

            with b.if_then(has_bias):
                for r in range(ROWS):
                    brow = b.mul(b.add(b.mul(h, bias_ld), qis[r]), bias_ld)

                    def add_bias(ty: ir.Type, j: ir.Value, srow=srows[r], brow=brow) -> None:
                        off = b.add(srow, b.mul(j, four))
                        bv = load_at(b, ty, bias, b.mul(b.add(brow, j), four), 4)
                        store_at(b, b.fadd(load_at(b, ty, scratch, off, 4), bv), scratch, off, 4)

                    chunks(n, "bi", add_bias)

            # softmax of the ROWS rows, interleaved: max, then exp and sum
            for slot in stats:
                b.store(_fconst(vt, NEG), slot)
            with for_range(b, const_i64(0), nvec, w, "mx") as j:
                joff = b.mul(j, four)
                for srow, slot in zip(srows, stats):
                    v, cur = load_at(b, vt, scratch, b.add(srow, joff), 4), b.load(slot)
                    b.store(b.select(b.fcmp_ordered(">", v, cur), v, cur), slot)
            maxes = [splat(b, hmax_tree(b, b.load(slot)), w) for slot in stats]
            for slot in stats:
                b.store(ir.Constant(vt, None), slot)
            with for_range(b, const_i64(0), nvec, w, "ex") as j:
                valid = b.icmp_signed("<", b.add(splat(b, j, w), iota), splat(b, n, w))
                joff = b.mul(j, four)
                for srow, mx, slot in zip(srows, maxes, stats):
                    off = b.add(srow, joff)
                    e = emit_exp(b, m, b.fsub(load_at(b, vt, scratch, off, 4), mx))
                    e = b.select(valid, e, ir.Constant(vt, None))
                    store_at(b, e, scratch, off, 4)
                    b.store(b.fadd(b.load(slot), e), slot)
            for slot, r_inv in zip(stats, inv):
                b.store(b.fdiv(ir.Constant(F32, 1.0), hsum_tree(b, b.load(slot))), r_inv)

            def weighted(ty: ir.Type, dc: ir.Value) -> None:
                lanes = ty.count
                slots = accs[lanes]
                for slot in slots:
                    b.store(ir.Constant(ty, None), slot)
                with for_range(b, const_i64(0), n, 1, "j") as j:
                    vv = load_at(b, ty, scratch, b.add(v_at, b.mul(b.add(b.mul(j, D), dc), four)), 4)
                    joff = b.mul(j, four)
                    for srow, slot in zip(srows, slots):
                        p = splat(b, load_at(b, F32, scratch, b.add(srow, joff), 4), lanes)
                        b.store(fmuladd(b, m, p, vv, b.load(slot)), slot)
                for r, slot in enumerate(slots):
                    i = b.add(i0, const_i64(r))
                    with b.if_then(b.icmp_signed("<", i, n)):
                        ooff = b.mul(b.add(b.add(b.mul(b.add(st, i), hidden), hd), dc), four)
                        store_at(b, b.fmul(b.load(slot), splat(b, b.load(inv[r]), lanes)), out, ooff, 4)

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


_local = threading.local()


def _scratch(floats: int) -> np.ndarray:
    """Worker scratch, kept per calling thread (a step program recording gets its own:
    ``codegen.program``)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.size < floats:
        buf = _local.scratch = aligned_empty((floats,), np.float32)
    return buf


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
    longest = int(lengths.max())
    work = int((lengths.astype(np.float64) ** 2).sum()) * n_head * head_dim
    ranges = row_ranges(pairs, threads if work >= PARALLEL_MIN_WORK else 1)
    per_worker = scratch_floats(head_dim, longest, native.isa.lanes)
    scratch = _scratch(len(ranges) * per_worker)
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


def _twin(y, qkv_bias, t, n_head, head_dim, starts, lengths, scale, bias=None, threads=1, out=None):
    y, qkv_bias, t, starts, lengths, bias = _checked(y, qkv_bias, t, n_head, head_dim, starts, lengths, bias)
    qkv = combine_reference(y, qkv_bias, False)
    result = attention_reference(qkv, n_head, head_dim, starts, lengths, scale, bias)
    if out is None:
        return result
    out[...] = result
    return out


ENCODER_ATTENTION = Kernel("encoder_attention", PARAMS, _emit, twin=_twin, drive=_drive)
ENCODER_ATTENTION_MODULE = KernelModule("ep_encoder_attention", [ENCODER_ATTENTION])
