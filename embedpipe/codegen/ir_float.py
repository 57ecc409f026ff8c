"""fp32 FMA matmul kernel for F32/F16/BF16 weights (repacked to fp32 panels at load time).

Weights are packed ``[panel][k][vector][lane]`` (``NR = lanes·NV`` rows per panel), so one
k step loads NV weight vectors and broadcasts one activation per token row: ``MR·NV``
independent FMA chains per micro-tile.  Token rows past ``T`` in the last tile re-read row
``T-1`` (no padding copy of X) and are not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import (
    F32,
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


@dataclass(frozen=True)
class FloatTile:
    mr: int
    nv: int
    tc: int = 64


def matmul_symbol(isa: IsaSpec, tile: FloatTile) -> str:
    return f"ep_f32mm_{isa.name}_{tile.mr}x{tile.nv}_{tile.tc}"


def emit_matmul(m: ir.Module, isa: IsaSpec, tile: FloatTile) -> str:
    """``void f(w, x, y, T, N, K, ldy, t0, t1, p0, p1)``: rows ``[t0,t1)`` × panels ``[p0,p1)``."""
    L, MR, NV = isa.lanes, tile.mr, tile.nv
    vf = vec(F32, L)
    name = matmul_symbol(isa, tile)
    args = [
        ("w", PTR),
        ("x", PTR),
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
    fn, b = new_function(m, name, args)
    w, x, y, T, N, K, ldy, t0, t1, p0, p1 = fn.args
    NR = L * NV
    slots = [[b.alloca(vf) for _ in range(NV)] for _ in range(MR)]
    last = b.sub(T, const_i64(1))
    with for_range(b, t0, t1, tile.tc, "tc") as tc:
        tend = imin(b, b.add(tc, const_i64(tile.tc)), t1)
        with for_range(b, p0, p1, 1, "p") as p:
            wpanel = b.mul(b.mul(p, K), const_i64(NR * 4))
            with for_range(b, tc, tend, MR, "t") as t:
                for row in slots:
                    for slot in row:
                        b.store(ir.Constant(vf, None), slot)
                xrows = [b.mul(imin(b, b.add(t, const_i64(r)), last), b.mul(K, const_i64(4))) for r in range(MR)]
                with for_range(b, const_i64(0), K, 1, "k") as k:
                    wk = b.add(wpanel, b.mul(k, const_i64(NR * 4)))
                    wv = [load_at(b, vf, w, b.add(wk, const_i64(v * L * 4)), 4 * L) for v in range(NV)]
                    k4 = b.mul(k, const_i64(4))
                    for r in range(MR):
                        xb = splat(b, load_at(b, F32, x, b.add(xrows[r], k4), 4), L)
                        for v in range(NV):
                            b.store(fmuladd(b, m, xb, wv[v], b.load(slots[r][v])), slots[r][v])
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
