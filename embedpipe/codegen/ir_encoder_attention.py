"""IR of the BERT family's attention kernel (``encoder_attention`` drives it): bidirectional
attention of packed sequences over their real tokens, one native call per layer.

For every (sequence, head) pair and block of ``ROWS`` query rows: scores against the sequence's
keys (``scale`` times ``q·k``, plus an optional additive per-head bias such as MPNet's relative
position bias), softmax, and the probability-weighted sum of values, written straight into the
output rows. Per worker, only the pair's keys transposed (``head_dim`` × tokens, so a block of
scores is ``head_dim`` steps of one key-vector load feeding ``ROWS`` FMAs), its scaled queries
and ``ROWS`` rows of scores exist at a time (never T×T); a block of outputs likewise loads each
value vector once for ``ROWS`` rows.

The input is the fused QKV product ``y`` (T rows) before its bias. Each (sequence, head) pair
copies its queries (bias added, times ``scale``) into worker scratch and transposes its keys
(bias added) there in w × w register blocks; values are read from ``y`` where they lie, and
their bias is added to the normalized output (a row of probabilities sums to 1), so the biased
T × 3·hidden array is never written. Within a row: q at column 0, k at ``hidden``, v at
``2·hidden``, head ``h`` at ``h·head_dim`` within each block.

The softmax exponential is clamped to results that are normal numbers: the lanes past a
sequence sit at the clamp, and a subnormal result would cost a microcode assist per vector.
Model-agnostic: a sequence is a range of rows.
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen.ir_elementwise import _fconst, emit_exp
from embedpipe.codegen.irutil import (
    F32,
    I1,
    I32,
    I64,
    PTR,
    const_i64,
    fmuladd,
    for_range,
    gep_bytes,
    hmax_tree,
    hsum_tree,
    intrinsic,
    load_at,
    splat,
    store_at,
    transpose_square,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

# Query rows handled together: each key (score step) and value (output step) vector loaded once
# feeds ROWS independent FMA chains, and the softmax of the ROWS rows runs interleaved (ROWS
# independent exp chains per step), so neither loads nor latency bound the loops.
ROWS = 8
NEG = -3.0e38  # score of a lane past the sequence: below every real score, exp gives ~0
# Head dims with bodies of their own (constant strides and trip counts); others take the generic one.
SPECIALIZED_HEAD_DIMS = (32, 64)

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
    """fp32 scratch one worker needs: a head's keys transposed (head_dim × L), its scaled
    queries (L × head_dim) and ROWS score rows (ROWS × L), L the longest sequence rounded up
    to whole vectors."""
    padded = -(-longest // lanes) * lanes
    return (2 * head_dim + ROWS) * padded


def _accumulators(isa: IsaSpec) -> int:
    """Vector accumulators the score and output loops keep live: 16 where the ISA has 32
    vector registers (AVX-512: 16 lanes), else 8 (of 16)."""
    return 16 if isa.lanes >= 16 else ROWS


def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """The kernel body (``PARAMS``) for ``isa``."""
    D, bias_ld = b.function.args[9], b.function.args[11]
    w = isa.lanes
    slots = {n: [b.alloca(vec(F32, n)) for _ in range(_accumulators(isa))] for n in (w, 1)}
    slots["stats"] = [b.alloca(vec(F32, w)) for _ in range(ROWS)]
    slots["inv"] = [b.alloca(F32) for _ in range(ROWS)]
    done = b.append_basic_block("done")
    # one body per (head_dim, bias) variant: constant strides, no per-vector branch on the bias
    with_bias = b.icmp_signed("!=", bias_ld, const_i64(0))
    bodies = {}
    for biased in (False, True):
        bodies[biased] = b.append_basic_block(f"bias{int(biased)}")
    b.cbranch(with_bias, bodies[True], bodies[False])
    for biased, blk in bodies.items():
        b.position_at_end(blk)
        generic = b.append_basic_block(f"bias{int(biased)}.generic")
        switch = b.switch(D, generic)
        for dim in SPECIALIZED_HEAD_DIMS:
            case = b.append_basic_block(f"bias{int(biased)}.d{dim}")
            switch.add_case(const_i64(dim), case)
            b.position_at_end(case)
            _emit_pairs(b, isa, slots, const_i64(dim), biased)
            b.branch(done)
        b.position_at_end(generic)
        _emit_pairs(b, isa, slots, D, biased)
        b.branch(done)
    b.position_at_end(done)
    b.ret_void()


def _emit_pairs(b: ir.IRBuilder, isa: IsaSpec, slots: dict, D: ir.Value, biased: bool) -> None:
    y, qkv_bias, bias, out, scratch, starts, lengths, T, H, _, stride, bias_ld, scale_bits, p0, p1 = b.function.args
    m = b.module
    w = isa.lanes
    vt = vec(F32, w)
    four = const_i64(4)
    zero = const_i64(0)
    groups = _accumulators(isa) // ROWS  # score / output vectors per step
    scale = b.bitcast(b.trunc(scale_bits, I32), F32)
    hidden = b.mul(H, D)
    iota = ir.Constant(vec(I64, w), list(range(w)))
    neg = _fconst(vt, NEG)
    masked_load = intrinsic(m, f"llvm.masked.load.v{w}f32.p0", vt, [PTR, I32, vec(I1, w), vt])

    def y_at(ty: ir.Type, row: ir.Value, col: ir.Value) -> ir.Value:
        return load_at(b, ty, y, b.mul(b.add(b.mul(row, stride), col), four), 4)

    def outer_fma(scalars: list[ir.Value], vectors: list[ir.Value], accs: list) -> None:
        """``accs[r·g + k] += scalars[r] · vectors[k]`` (g = len(vectors)): a rank-1 update of
        a register tile, each scalar broadcast to the vectors' width."""
        g = len(vectors)
        for r, x in enumerate(scalars):
            xs = splat(b, x, vectors[0].type.count)
            for k, v in enumerate(vectors):
                b.store(fmuladd(b, m, xs, v, b.load(accs[r * g + k])), accs[r * g + k])

    def chunks(n: ir.Value, tag: str, body, group: int = 1, tail: bool = True) -> None:
        """``body(ty, j, g)`` over [0, n): ``g`` w-lane vectors at a time (``group``, then 1),
        then single lanes (none when ``tail`` is False: ``n`` is whole vectors)."""
        vstop = b.sub(n, b.srem(n, const_i64(w))) if tail else n
        gstop = b.sub(n, b.srem(n, const_i64(w * group))) if group > 1 else zero
        if group > 1:
            with for_range(b, zero, gstop, w * group, tag + "g") as j:
                body(vt, j, group)
        with for_range(b, gstop, vstop, w, tag) as j:
            body(vt, j, 1)
        if tail:
            with for_range(b, vstop, n, 1, tag + "t") as j:
                body(vec(F32, 1), j, 1)

    with for_range(b, p0, p1, 1, "pair") as pair:
        seq = b.sdiv(pair, H)
        h = b.srem(pair, H)
        st = load_at(b, I64, starts, b.mul(seq, const_i64(8)), 8)
        n = load_at(b, I64, lengths, b.mul(seq, const_i64(8)), 8)
        hd = b.mul(h, D)
        last = b.sub(n, const_i64(1))
        nvec = b.mul(b.sdiv(b.add(n, const_i64(w - 1)), const_i64(w)), const_i64(w))
        # scratch: kT (D × nvec), q (nvec × D), then ROWS score rows
        q_at = b.mul(b.mul(D, nvec), four)
        scores_at = b.mul(q_at, const_i64(2))
        kcol, vcol = b.add(hidden, hd), b.add(b.mul(hidden, const_i64(2)), hd)

        # queries with their bias, times the scale
        with for_range(b, zero, n, 1, "gq") as j:
            row, rowoff = b.add(st, j), b.add(q_at, b.mul(b.mul(j, D), four))

            def gather(ty: ir.Type, d: ir.Value, _g: int, row=row, rowoff=rowoff) -> None:
                col = b.add(hd, d)
                v = b.fadd(y_at(ty, row, col), load_at(b, ty, qkv_bias, b.mul(col, four), 4))
                store_at(b, b.fmul(v, splat(b, scale, ty.count)), scratch, b.add(rowoff, b.mul(d, four)), 4)

            chunks(D, "gd", gather)

        # keys with their bias, transposed (d-major, zero past the sequence), w × w blocks
        # in registers
        with for_range(b, zero, nvec, w, "kj") as j0:
            rows = [b.add(j0, const_i64(r)) for r in range(w)]
            inside = [b.icmp_signed("<", j, n) for j in rows]
            src = [b.add(st, b.select(ok, j, last)) for ok, j in zip(inside, rows)]
            dstop = b.sub(D, b.srem(D, const_i64(w)))
            with for_range(b, zero, dstop, w, "kd") as d0:
                col = b.add(kcol, d0)
                kb = load_at(b, vt, qkv_bias, b.mul(col, four), 4)
                loaded = [
                    b.select(ok, b.fadd(y_at(vt, r, col), kb), ir.Constant(vt, None)) for ok, r in zip(inside, src)
                ]
                for c, v in enumerate(transpose_square(b, loaded)):
                    store_at(b, v, scratch, b.mul(b.add(b.mul(b.add(d0, const_i64(c)), nvec), j0), four), 4)
            with for_range(b, dstop, D, 1, "kdt") as d:
                col = b.add(kcol, d)
                kb = load_at(b, F32, qkv_bias, b.mul(col, four), 4)
                for r, (ok, srow) in enumerate(zip(inside, src)):
                    kv = b.select(ok, b.fadd(y_at(F32, srow, col), kb), ir.Constant(F32, 0.0))
                    store_at(b, kv, scratch, b.mul(b.add(b.mul(d, nvec), b.add(j0, const_i64(r))), four), 4)

        with for_range(b, zero, n, ROWS, "qi") as i0:
            # rows past the sequence repeat its last row; their results are not stored
            qis = []
            for r in range(ROWS):
                i = b.add(i0, const_i64(r))
                qis.append(b.select(b.icmp_signed("<", i, n), i, last))
            qoffs = [b.add(q_at, b.mul(b.mul(qi, D), four)) for qi in qis]
            srows = [b.add(scores_at, b.mul(b.mul(const_i64(r), nvec), four)) for r in range(ROWS)]
            brows = [b.mul(b.add(b.mul(h, bias_ld), qi), bias_ld) for qi in qis] if biased else []
            for slot in slots["stats"]:
                b.store(neg, slot)

            def scores(_ty: ir.Type, j: ir.Value, g: int) -> None:
                accs = slots[w][: ROWS * g]
                for slot in accs:
                    b.store(ir.Constant(vt, None), slot)
                with for_range(b, zero, D, 1, "d") as d:
                    kvs = [
                        load_at(b, vt, scratch, b.mul(b.add(b.mul(d, nvec), b.add(j, const_i64(k * w))), four), 4)
                        for k in range(g)
                    ]
                    doff = b.mul(d, four)
                    qds = [load_at(b, F32, scratch, b.add(qoff, doff), 4) for qoff in qoffs]
                    outer_fma(qds, kvs, accs)
                # lanes past the sequence score NEG; the running max of each row
                for k in range(g):
                    jk = b.add(j, const_i64(k * w))
                    valid = b.icmp_signed("<", b.add(splat(b, jk, w), iota), splat(b, n, w))
                    for r in range(ROWS):
                        s = b.load(accs[r * g + k])
                        if biased:
                            ptr = gep_bytes(b, bias, b.mul(b.add(brows[r], jk), four))
                            s = b.fadd(s, b.call(masked_load, [ptr, ir.Constant(I32, 4), valid, ir.Constant(vt, None)]))
                        s = b.select(valid, s, neg)
                        store_at(b, s, scratch, b.add(srows[r], b.mul(jk, four)), 4)
                        cur = b.load(slots["stats"][r])
                        b.store(b.select(b.fcmp_ordered(">", s, cur), s, cur), slots["stats"][r])

            chunks(nvec, "sc", scores, groups, tail=False)

            # softmax of the ROWS rows, interleaved: exp and sum (lanes past the sequence
            # add at most w·1.7e-38 to a sum of at least 1)
            maxes = [splat(b, hmax_tree(b, b.load(slot)), w) for slot in slots["stats"]]
            for slot in slots["stats"]:
                b.store(ir.Constant(vt, None), slot)
            with for_range(b, zero, nvec, w, "ex") as j:
                joff = b.mul(j, four)
                for srow, mx, slot in zip(srows, maxes, slots["stats"]):
                    off = b.add(srow, joff)
                    e = emit_exp(b, m, b.fsub(load_at(b, vt, scratch, off, 4), mx), nonpositive=True)
                    store_at(b, e, scratch, off, 4)
                    b.store(b.fadd(b.load(slot), e), slot)
            for slot, r_inv in zip(slots["stats"], slots["inv"]):
                b.store(b.fdiv(ir.Constant(F32, 1.0), hsum_tree(b, b.load(slot))), r_inv)

            # probability-weighted values, read from the product; the value bias is added
            # after the normalization (each row of probabilities sums to 1)
            def weighted(ty: ir.Type, dc: ir.Value, g: int) -> None:
                lanes = ty.count
                accs = slots[lanes][: ROWS * g]
                for slot in accs:
                    b.store(ir.Constant(ty, None), slot)
                with for_range(b, zero, n, 1, "j") as j:
                    row = b.add(st, j)
                    vvs = [y_at(ty, row, b.add(vcol, b.add(dc, const_i64(k * lanes)))) for k in range(g)]
                    joff = b.mul(j, four)
                    outer_fma([load_at(b, F32, scratch, b.add(srow, joff), 4) for srow in srows], vvs, accs)
                for k in range(g):
                    col = b.add(vcol, b.add(dc, const_i64(k * lanes)))
                    vb = load_at(b, ty, qkv_bias, b.mul(col, four), 4)
                    for r in range(ROWS):
                        i = b.add(i0, const_i64(r))
                        with b.if_then(b.icmp_signed("<", i, n)):
                            ooff = b.mul(
                                b.add(b.add(b.mul(b.add(st, i), hidden), hd), b.add(dc, const_i64(k * lanes))), four
                            )
                            o = fmuladd(b, m, b.load(accs[r * g + k]), splat(b, b.load(slots["inv"][r]), lanes), vb)
                            store_at(b, o, out, ooff, 4)

            chunks(D, "dv", weighted, groups)
