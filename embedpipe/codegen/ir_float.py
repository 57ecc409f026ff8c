"""fp32 FMA matmul kernels: F32/F16/BF16 weights (repacked to fp32 panels at load time), and
int8 block-coded weights (Q8_0, Q4_0) times fp32 activations.

Weights are packed ``[panel][k][vector][lane]`` (``NR = lanes·NV`` rows per panel), so one
k step loads NV weight vectors and broadcasts one activation per token row: ``MR·NV``
independent FMA chains per micro-tile.  Token rows past ``T`` in the last tile re-read row
``T-1`` (no padding copy of X) and are not stored.

The coded variant (``emit_matmul_codes``) keeps the weight as int8 codes in the same panel
layout plus an fp32 scale per 32-element block and lane, and widens ``code·scale`` to fp32
in registers: that product is exact in fp32 (an fp16 scale times an 8-bit code needs at most
19 significant bits), so it computes exactly what the fp32 kernel computes on the dequantized
weight while streaming a quarter of the bytes.  It is for products whose activations must
stay fp32 (a projection head over pooled rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
    I8,
    I64,
    PTR,
    const_i64,
    fmuladd,
    for_range,
    imin,
    load_at,
    new_function,
    splat,
    store_tile,
    vec,
)
from embedpipe.codegen.isa import IsaSpec

QK = 32  # elements per scale block of coded weights (ggml's Q8_0/Q4_0 block)


@dataclass(frozen=True)
class FloatTile:
    mr: int
    nv: int
    tc: int = 64


def matmul_symbol(isa: IsaSpec, tile: FloatTile) -> str:
    return f"ep_f32mm_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_matmul(m: ir.Module, isa: IsaSpec, tile: FloatTile) -> str:
    """``void f(w, x, y, T, N, K, ldy, t0, t1, p0, p1)``: rows ``[t0,t1)`` × panels ``[p0,p1)``."""
    return _emit(m, isa, tile, matmul_symbol(isa, tile), coded=False)


def codes_symbol(isa: IsaSpec, tile: FloatTile) -> str:
    return f"ep_c8f32mm_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_matmul_codes(m: ir.Module, isa: IsaSpec, tile: FloatTile) -> str:
    """``void f(wq, wd, x, y, T, N, K, ldy, t0, t1, p0, p1)``: as ``emit_matmul`` for int8 codes
    ``wq`` ``[panel][k][NR]`` and fp32 scales ``wd`` ``[panel][k/32][NR]`` (K a multiple of 32)."""
    return _emit(m, isa, tile, codes_symbol(isa, tile), coded=True)


def _emit(m: ir.Module, isa: IsaSpec, tile: FloatTile, name: str, coded: bool) -> str:
    L, MR, NV = isa.lanes, tile.mr, tile.nv
    vf = vec(F32, L)
    args = [("w", PTR), *([("wd", PTR)] if coded else []), ("x", PTR), ("y", PTR)]
    args += [(n, I64) for n in ("T", "N", "K", "ldy", "t0", "t1", "p0", "p1")]
    fn, b = new_function(m, name, args)
    if coded:
        w, wd, x, y, T, N, K, ldy, t0, t1, p0, p1 = fn.args
    else:
        w, x, y, T, N, K, ldy, t0, t1, p0, p1 = fn.args
    NR = L * NV
    wbytes = 1 if coded else 4  # bytes per packed weight element
    slots = [[b.alloca(vf) for _ in range(NV)] for _ in range(MR)]
    last = b.sub(T, const_i64(1))
    with for_range(b, t0, t1, tile.tc, "tc") as tc:
        tend = imin(b, b.add(tc, const_i64(tile.tc)), t1)
        with for_range(b, p0, p1, 1, "p") as p:
            wpanel = b.mul(b.mul(p, K), const_i64(NR * wbytes))
            with for_range(b, tc, tend, MR, "t") as t:
                for row in slots:
                    for slot in row:
                        b.store(ir.Constant(vf, None), slot)
                xrows = [b.mul(imin(b, b.add(t, const_i64(r)), last), b.mul(K, const_i64(4))) for r in range(MR)]

                def k_step(k: ir.Value, scales: list[ir.Value] | None) -> None:
                    wk = b.add(wpanel, b.mul(k, const_i64(NR * wbytes)))
                    if scales is None:
                        wv = [load_at(b, vf, w, b.add(wk, const_i64(v * L * 4)), 4 * L) for v in range(NV)]
                    else:
                        codes = [load_at(b, vec(I8, L), w, b.add(wk, const_i64(v * L)), 1) for v in range(NV)]
                        wv = [b.fmul(b.sitofp(c, vf), s) for c, s in zip(codes, scales)]
                    k4 = b.mul(k, const_i64(4))
                    for r in range(MR):
                        xb = splat(b, load_at(b, F32, x, b.add(xrows[r], k4), 4), L)
                        for v in range(NV):
                            b.store(fmuladd(b, m, xb, wv[v], b.load(slots[r][v])), slots[r][v])

                if not coded:
                    with for_range(b, const_i64(0), K, 1, "k") as k:
                        k_step(k, None)
                else:
                    nb = b.sdiv(K, const_i64(QK))
                    with for_range(b, const_i64(0), nb, 1, "blk") as blk:
                        sbase = b.mul(b.add(b.mul(p, nb), blk), const_i64(NR * 4))
                        scales = [load_at(b, vf, wd, b.add(sbase, const_i64(v * L * 4)), 4) for v in range(NV)]
                        with for_range(b, const_i64(0), const_i64(QK), 1, "kk") as kk:
                            k_step(b.add(b.mul(blk, const_i64(QK)), kk), scales)
                store_tile(b, m, slots, t, p, T, N, y, ldy, NR, L)
    b.ret_void()
    return name


def pack_weights(
    w: np.ndarray, isa: IsaSpec, tile: FloatTile, out: Callable[[tuple[int, ...], type], np.ndarray] = np.empty
) -> np.ndarray:
    """fp32 W (N, K) -> ``[panel][k][vector][lane]``, rows zero-padded to a whole panel."""
    n, k = w.shape
    nr = isa.lanes * tile.nv
    npad = -(-n // nr) * nr
    if npad != n:
        w = np.concatenate([w, np.zeros((npad - n, k), np.float32)])
    packed = out((npad // nr, k, nr), np.float32)
    np.copyto(packed, w.reshape(npad // nr, nr, k).transpose(0, 2, 1))
    return packed


def pack_codes(
    q: np.ndarray,
    d: np.ndarray,
    isa: IsaSpec,
    tile: FloatTile,
    out: Callable[[tuple[int, ...], type], np.ndarray] = np.empty,
) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes ``q`` (N, K) and fp32 block scales ``d`` (N, K/32) -> codes
    ``[panel][k][NR]`` and scales ``[panel][k/32][NR]``, rows zero-padded to a whole panel."""
    n, k = q.shape
    nr = isa.lanes * tile.nv
    npad = -(-n // nr) * nr
    nb = k // QK
    if npad != n:
        q = np.concatenate([q, np.zeros((npad - n, k), np.int8)])
        d = np.concatenate([d, np.zeros((npad - n, nb), np.float32)])
    codes = out((npad // nr, k, nr), np.int8)
    np.copyto(codes, q.reshape(npad // nr, nr, k).transpose(0, 2, 1))
    scales = out((npad // nr, nb, nr), np.float32)
    np.copyto(scales, d.astype(np.float32).reshape(npad // nr, nr, nb).transpose(0, 2, 1))
    return codes, scales
