"""Integer-dot matmul kernels: ``Y = X · Wᵀ`` for weights held as int8 blocks of 32 with an
fp32 scale per block (Q8_0, and every other integer type after the load-time repack).

X is first quantized per 32-element block exactly like ggml's Q8_0 (``d = amax/127``,
``q = round(x/d)``) by the emitted ``quantize`` kernel (``ir_quantize``).  The matmul works on panels of
``NR = lanes·NV`` weight rows: for one block, lane ``j`` of vector ``v`` accumulates the integer
dot of token row ``r`` with weight row ``v·lanes + j`` while the activation's bytes are
broadcast to every lane, so each weight vector loaded is reused for ``MR`` token rows and each
broadcast activation group for ``NV`` vectors.  After a block, the integer sums are converted
and scaled by ``d_w[n] · d_x[t]`` into fp32 accumulators.

Dot strategies (``IsaSpec.dot``):

* ``vnni``: ``vpdpbusd`` multiplies unsigned by signed bytes.  Weights are stored as ``w+128``
  (u8) and each block's accumulator starts at ``-128·Σq_x`` (computed by ``quantize``), which
  removes the offset exactly.
* ``sdot``: AArch64 signed×signed bytes, no correction.
* ``maddubs`` (AVX2): ``vpmaddubsw`` on ``|w|`` (u8) and ``sign(w)·x`` (s8, ``vpsignb``),
  then ``vpmaddwd`` by ones: 4 instructions per 32 bytes, int8 weights.
* ``pmaddwd`` / ``widen``: both operands widened to int16 and multiplied in pairs
  (``vpmaddwd`` or plain vector IR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.ir_quantize import QK, act_elem_bytes, quantize_symbol
from embedpipe.codegen.irutil import (
    F32,
    I1,
    I8,
    I16,
    I32,
    I64,
    PTR,
    VOID,
    const_i64,
    fmuladd,
    for_range,
    imin,
    intrinsic,
    load_at,
    new_function,
    splat,
    store_tile,
    vec,
)
from embedpipe.codegen.isa import IsaSpec


@dataclass(frozen=True)
class IntTile:
    mr: int  # token rows per micro-tile
    nv: int  # weight vectors (of `lanes` rows) per panel
    tc: int = 64  # token rows per cache chunk


def group_dot(b: ir.IRBuilder, m: ir.Module, isa: IsaSpec, acc: ir.Value, w: ir.Value, x: ir.Value) -> ir.Value:
    """acc[lane] += Σ_g w[lane, g]·x[g] over the lane's group of ``kgroup`` elements."""
    n = isa.lanes
    vi32 = vec(I32, n)
    if isa.dot == "vnni":
        fn = intrinsic(m, f"llvm.x86.avx512.vpdpbusd.{n * 32}", vi32, [vi32] * 3)
        return b.call(fn, [acc, w, x])
    if isa.dot == "sdot":
        v8 = vec(I8, 4 * n)
        fn = intrinsic(m, f"llvm.aarch64.neon.sdot.v{n}i32.v{4 * n}i8", vi32, [vi32, v8, v8])
        return b.call(fn, [acc, b.bitcast(w, v8), b.bitcast(x, v8)])
    v8 = vec(I8, 4 * n)
    v16 = vec(I16, 2 * n)
    if isa.dot == "maddubs":
        # Sign trick, oriented so every value is exact: |w| as u8 (|-128| = 128 fits) times
        # sign(w)·x as s8 (x is within ±127); pair sums stay below int16 saturation.
        wb, xb = b.bitcast(w, v8), b.bitcast(x, v8)
        absb = intrinsic(m, f"llvm.abs.v{4 * n}i8", v8, [v8, I1])
        psign = intrinsic(m, "llvm.x86.avx2.psign.b", v8, [v8, v8])
        maddubs = intrinsic(m, "llvm.x86.avx2.pmadd.ub.sw", v16, [v8, v8])
        maddwd = intrinsic(m, "llvm.x86.avx2.pmadd.wd", vi32, [v16, v16])
        pairs = b.call(maddubs, [b.call(absb, [wb, ir.Constant(I1, 0)]), b.call(psign, [xb, wb])])
        return b.add(acc, b.call(maddwd, [pairs, ir.Constant(v16, [1] * (2 * n))]))
    if isa.dot == "pmaddwd":
        name = "llvm.x86.avx2.pmadd.wd" if n == 8 else "llvm.x86.avx512.pmaddw.d.512"
        fn = intrinsic(m, name, vi32, [v16, v16])
        return b.add(acc, b.call(fn, [b.bitcast(w, v16), b.bitcast(x, v16)]))
    wide = vec(I32, 2 * n)
    prod = b.mul(b.sext(b.bitcast(w, v16), wide), b.sext(b.bitcast(x, v16), wide))
    even = b.shuffle_vector(prod, prod, ir.Constant(vi32, list(range(0, 2 * n, 2))))
    odd = b.shuffle_vector(prod, prod, ir.Constant(vi32, list(range(1, 2 * n, 2))))
    return b.add(acc, b.add(even, odd))


def _prefetch_l2(b: ir.IRBuilder, m: ir.Module, addr: ir.Value) -> None:
    """A hint to bring the cache line at ``addr`` into L2 (never faults)."""
    fn = intrinsic(m, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
    b.call(fn, [addr, ir.Constant(I32, 0), ir.Constant(I32, 2), ir.Constant(I32, 1)])


def matmul_symbol(isa: IsaSpec, tile: IntTile, block_scales: bool = True) -> str:
    return f"ep_q8mm{'' if block_scales else '_rowscale'}_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


#: A call's first row chunk with fewer rows than this runs the loop that prefetches the next
#: weight panel (``emit_matmul``).
STREAMING_ROWS = 48

MATMUL_PARAMS = [
    ("wq", PTR),
    ("wd", PTR),
    ("xq", PTR),
    ("xd", PTR),
    ("xc", PTR),
    ("y", PTR),
    ("T", I64),
    ("N", I64),
    ("K", I64),
    ("ldy", I64),
    ("t0", I64),
    ("t1", I64),
    ("p0", I64),
    ("p1", I64),
]


def emit_matmul(m: ir.Module, isa: IsaSpec, tile: IntTile, block_scales: bool = True) -> str:
    """``void f(wq, wd, xq, xd, xc, y, T, N, K, ldy, t0, t1, p0, p1)``.

    Rows ``[t0, t1)`` (multiples of MR, within the padded activation buffer) times panels
    ``[p0, p1)``; Y rows ``>= T`` and columns ``>= N`` are not written.

    The rows go in chunks of ``tile.tc``, each chunk walking every panel. A first chunk of
    fewer than ``STREAMING_ROWS`` rows (a short text's product) is mostly waiting for weights
    streamed from memory, so its loop prefetches the next panel into L2 while it works on
    this one. Every other chunk runs a copy of the loop without the prefetch: a later chunk
    finds the panels in cache, and a full first chunk reuses each panel for enough row tiles
    that the hardware prefetcher keeps up. There the prefetch's address arithmetic and
    branches only cost issue slots, and made LLVM copy the fp32 accumulators at every block
    instead of updating them in place.

    ``block_scales=False`` emits the same loop for int8 operands with one scale per row, as
    per-channel int8 schemes have: the integer sums run over all of K, start from ``xc[t]``
    (one VNNI correction per row) and are scaled once per tile by block 0's scales, which
    stand for the row's. No model runs it: ``scale_ceiling`` times it to show what the
    per-block conversion and scaling of Q8_0 cost the same loop.
    """
    name = matmul_symbol(isa, tile, block_scales)
    streaming = _emit_chunks(m, isa, tile, block_scales, f"{name}__streaming", prefetch=True)
    cached = _emit_chunks(m, isa, tile, block_scales, f"{name}__cached", prefetch=False)
    fn, b = new_function(m, name, MATMUL_PARAMS)
    args = list(fn.args)
    t0, t1 = args[10], args[11]
    with for_range(b, t0, t1, tile.tc, "chunk") as tc:
        end = imin(b, b.add(tc, const_i64(tile.tc)), t1)
        few = b.icmp_signed("<", b.sub(end, tc), const_i64(STREAMING_ROWS))
        with b.if_else(b.and_(b.icmp_signed("==", tc, t0), few)) as (first, later):
            with first:
                b.call(streaming, [*args[:10], tc, end, *args[12:]])
            with later:
                b.call(cached, [*args[:10], tc, end, *args[12:]])
    b.ret_void()
    return name


def _emit_chunks(
    m: ir.Module, isa: IsaSpec, tile: IntTile, block_scales: bool, name: str, prefetch: bool
) -> ir.Function:
    """The product loop over one row chunk ``[t0, t1)`` (at most ``tile.tc`` rows;
    ``emit_matmul``'s parameters), as a function of its own (not inlined, so each copy of the
    loop is register-allocated alone), with or without the prefetch of the next panel."""
    L, MR, NV = isa.lanes, tile.mr, tile.nv
    G, eb = isa.kgroup, act_elem_bytes(isa)
    steps = QK // G
    vbytes = L * G * eb  # bytes of one packed weight vector
    vi32, vf32 = vec(I32, L), vec(F32, L)
    fn, b = new_function(m, name, MATMUL_PARAMS)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    wq, wd, xq, xd, xc, y, T, N, K, ldy, t0, t1, p0, p1 = fn.args
    nb = b.sdiv(K, const_i64(QK), name="nb")
    NR = L * NV
    # cache lines of one panel: its weight blocks, then its block scales
    w_lines = b.sdiv(b.mul(nb, const_i64(steps * NV * vbytes)), const_i64(64))
    next_lines = b.add(w_lines, b.sdiv(b.add(b.mul(nb, const_i64(NV * 4 * L)), const_i64(63)), const_i64(64)))
    acc_slots = [[b.alloca(vf32) for _ in range(NV)] for _ in range(MR)]
    int_slots = [[b.alloca(vi32) for _ in range(NV)] for _ in range(MR)] if not block_scales else []
    tiles = b.sdiv(b.add(b.sub(t1, t0), const_i64(MR - 1)), const_i64(MR))
    with for_range(b, p0, p1, 1, "p") as p:
        has_next = b.icmp_signed("<", b.add(p, const_i64(1)), p1)
        per_step = b.sdiv(b.add(next_lines, b.sub(b.mul(tiles, nb), const_i64(1))), b.mul(tiles, nb))
        with for_range(b, t0, t1, MR, "t") as t:
            for row in acc_slots:
                for slot in row:
                    b.store(ir.Constant(vf32, None), slot)
            for r, row in enumerate(int_slots):
                start = ir.Constant(vi32, None)
                if isa.dot == "vnni":
                    start = splat(b, load_at(b, I32, xc, b.mul(b.add(t, const_i64(r)), const_i64(4)), 4), L)
                for slot in row:
                    b.store(start, slot)
            pnb = b.mul(p, nb)
            # The row tiles of a chunk walk this panel block by block (the first one
            # streaming it from memory); meanwhile the next panel is fetched into L2, its
            # lines spread evenly over those block steps, so its tiles find it there.
            step = b.mul(b.sdiv(b.sub(t, t0), const_i64(MR)), nb)
            with for_range(b, const_i64(0), nb, 1, "blk") as blk:
                pb = b.add(pnb, blk)
                wbase = b.mul(pb, const_i64(steps * NV * vbytes))
                if prefetch:
                    with b.if_then(has_next):
                        first = b.mul(b.add(step, blk), per_step)
                        lines = (first, imin(b, b.add(first, per_step), next_lines), w_lines)
                        _prefetch_panel_lines(b, m, wq, wd, b.add(pnb, nb), *lines, steps * NV * vbytes, NV * 4 * L)
                xrow = [b.add(t, const_i64(r)) for r in range(MR)]
                xsc = [b.add(b.mul(xr, nb), blk) for xr in xrow]
                if not block_scales:
                    iacc = [[b.load(slot) for slot in row] for row in int_slots]
                elif isa.dot == "vnni":
                    iacc = [[splat(b, load_at(b, I32, xc, b.mul(s, const_i64(4)), 4), L)] * NV for s in xsc]
                else:
                    iacc = [[ir.Constant(vi32, None)] * NV for _ in range(MR)]
                xoff = [b.mul(b.add(b.mul(xr, K), b.mul(blk, const_i64(QK))), const_i64(eb)) for xr in xrow]
                for s in range(steps):
                    wv = [
                        load_at(b, vi32, wq, b.add(wbase, const_i64((s * NV + v) * vbytes)), vbytes) for v in range(NV)
                    ]
                    for r in range(MR):
                        xb = splat(b, load_at(b, I32, xq, b.add(xoff[r], const_i64(s * G * eb)), 4), L)
                        iacc[r] = [group_dot(b, m, isa, iacc[r][v], wv[v], xb) for v in range(NV)]
                if block_scales:
                    _scale_block(b, m, isa, wd, xd, pb, xsc, iacc, acc_slots, NV)
                else:
                    for r in range(MR):
                        for v in range(NV):
                            b.store(iacc[r][v], int_slots[r][v])
            if not block_scales:
                row_scale = [b.mul(b.add(t, const_i64(r)), nb) for r in range(MR)]
                iacc = [[b.load(slot) for slot in row] for row in int_slots]
                _scale_block(b, m, isa, wd, xd, pnb, row_scale, iacc, acc_slots, NV)
            store_tile(b, m, acc_slots, t, p, T, N, y, ldy, NR, L)
    b.ret_void()
    return fn


def _prefetch_panel_lines(b, m, wq, wd, panel_block, first, last, w_lines, wstride: int, sstride: int) -> None:
    """Prefetch cache lines ``[first, last)`` of the panel whose first block is ``panel_block``:
    its ``w_lines`` lines of weight blocks (``wstride`` bytes a block), then its block scales
    (``sstride`` bytes a block)."""
    with for_range(b, first, last, 1, "pf") as line:
        in_w = b.icmp_signed("<", line, w_lines)
        base = b.select(in_w, b.ptrtoint(wq, I64), b.ptrtoint(wd, I64))
        off = b.select(
            in_w,
            b.add(b.mul(panel_block, const_i64(wstride)), b.mul(line, const_i64(64))),
            b.add(b.mul(panel_block, const_i64(sstride)), b.mul(b.sub(line, w_lines), const_i64(64))),
        )
        _prefetch_l2(b, m, b.inttoptr(b.add(base, off), PTR))


def _scale_block(b, m, isa: IsaSpec, wd, xd, pb, xsc, iacc, acc_slots, nv: int) -> None:
    """``acc[r][v] += float(iacc[r][v]) · d_w[pb, v] · d_x[xsc[r]]``: one block's integer sums
    into the fp32 accumulators."""
    L = isa.lanes
    vf32 = vec(F32, L)
    dw = [
        load_at(b, vf32, wd, b.mul(b.add(b.mul(pb, const_i64(nv)), const_i64(v)), const_i64(4 * L)), 4 * L)
        for v in range(nv)
    ]
    for r, slots in enumerate(acc_slots):
        dx = splat(b, load_at(b, F32, xd, b.mul(xsc[r], const_i64(4)), 4), L)
        for v in range(nv):
            scale = b.fmul(dw[v], dx)
            cur = b.load(slots[v])
            b.store(fmuladd(b, m, b.sitofp(iacc[r][v], vf32), scale, cur), slots[v])


def pack_weights(
    q: np.ndarray,
    d: np.ndarray,
    isa: IsaSpec,
    tile: IntTile,
    out: Callable[[tuple[int, ...], type], np.ndarray] = np.empty,
) -> tuple[np.ndarray, np.ndarray]:
    """Repack int8 quants ``q`` (N, K) and scales ``d`` (N, K/32) into the panel layout.

    Layout: ``[panel][block][step][vector][lane][kgroup]`` for quants (u8 ``q+128`` for VNNI,
    int16 for pair dots) and ``[panel][block][vector][lane]`` fp32 for scales; rows are padded
    with zeros to a whole panel.  ``out(shape, dtype)`` allocates the results (e.g. aligned).
    Moves whole k-groups as one integer each, so the repack is a single strided copy.
    """
    n, k = q.shape
    L, NV, G = isa.lanes, tile.nv, isa.kgroup
    nr = L * NV
    npad = -(-n // nr) * nr
    nb = k // QK
    q = np.ascontiguousarray(q, dtype=np.int8)
    if npad != n:
        q = np.concatenate([q, np.zeros((npad - n, k), np.int8)])
        d = np.concatenate([d, np.zeros((npad - n, nb), np.float32)])
    if isa.dot == "vnni":
        groups = q.view(np.uint32) ^ np.uint32(0x80808080)  # q+128 as u8, four at a time
    elif G == 4:
        groups = q.view(np.uint32)
    else:  # widen to int16 pairs
        groups = q.astype(np.int16).view(np.uint32)
    src = groups.reshape(npad // nr, NV, L, nb, QK // G).transpose(0, 3, 4, 1, 2)
    packed = out(src.shape, np.uint32)
    np.copyto(packed, src)
    scales = out((npad // nr, nb, NV, L), np.float32)
    np.copyto(scales, d.astype(np.float32).reshape(npad // nr, NV, L, nb).transpose(0, 3, 1, 2))
    return packed, scales


def work_symbol(isa: IsaSpec, tile: IntTile) -> str:
    return f"ep_q8work_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_work(m: ir.Module, isa: IsaSpec, tile: IntTile) -> str:
    """``void f(x, xq, xd, xc, T, K, qa, qb, wq, wd, y, N, ldy, a, b, p0, p1)``: quantize
    activation rows ``[qa, qb)``, then multiply rows ``[a, b)`` by panels ``[p0, p1)`` — one
    thread's whole share of a product, so a fork-join needs a single hand-off."""
    quantize = m.get_global(quantize_symbol(isa))
    matmul = m.get_global(matmul_symbol(isa, tile))
    name = work_symbol(isa, tile)
    names = ["x", "xq", "xd", "xc", "T", "K", "qa", "qb", "wq", "wd", "y", "N", "ldy", "a", "b", "p0", "p1"]
    fn, b = new_function(m, name, [(n, PTR if n in ("x", "xq", "xd", "xc", "wq", "wd", "y") else I64) for n in names])
    a = dict(zip(names, fn.args))
    b.call(quantize, [a["x"], a["xq"], a["xd"], a["xc"], a["T"], a["K"], a["qa"], a["qb"]])
    b.call(
        matmul,
        [
            a["wq"],
            a["wd"],
            a["xq"],
            a["xd"],
            a["xc"],
            a["y"],
            a["T"],
            a["N"],
            a["K"],
            a["ldy"],
            a["a"],
            a["b"],
            a["p0"],
            a["p1"],
        ],
    )
    b.ret_void()
    return name
