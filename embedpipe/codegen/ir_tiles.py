"""Building blocks of kernels that multiply bf16 on AMX tiles (``ir_attention_amx``): the tile
configuration and instructions, rounding fp32 to bf16 and packing it into the layouts tile
products read, and the choice of where such a kernel may run (``tile_target``).

A kernel configures eight tiles of 16 rows × 64 bytes and multiplies in 2 × 2 blocks: C tiles
0-3 (16 × 16 fp32 each), A tiles 4-5 (16 rows × 32 bf16, row-major), B tiles 6-7 (16 rows of 16
pairs: B[k/2][n][2], "pair words" of two bf16 along K). Vector code is 16 fp32 lanes (the
tile unit comes with AVX-512).
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen.irutil import (
    F32,
    I1,
    I8,
    I32,
    I64,
    PTR,
    VOID,
    const_i64,
    gep_bytes,
    imin,
    intrinsic,
    lane_iota,
    round_up_value,
    splat,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.matrix_units import UNITS, kernel_units, tile_config

LANES = 16  # fp32 lanes of the vector code
TILE = 16  # rows of a tile, and fp32 columns of a C tile
CHUNK = 32  # bf16 elements in a 64-byte tile row: the K of one product
BLOCK = 2 * TILE  # rows (and columns) of a 2 × 2 block of C tiles
TILES = 8  # C: 0-3, A: 4-5, B: 6-7
ALIGN = 64  # bytes: scratch sections start on cache lines


UNIT = UNITS["amx_bf16"]


def tile_target(isa: IsaSpec) -> IsaSpec | None:
    """``isa`` with the AMX-BF16 features where a tile kernel may run for it on this host (an
    AVX-512 ISA, the unit present and granted, ``EMBEDPIPE_TILE_UNITS`` not off), else None."""
    if isa.lanes == LANES and UNIT in kernel_units(isa.arch):
        return UNIT.target(isa)
    return None


class TileEmitter:
    """Base of a tile kernel's emitter: ``b`` is the builder of its function."""

    def __init__(self, b: ir.IRBuilder) -> None:
        self.b, self.m = b, b.module
        self.vt, self.it = vec(F32, LANES), vec(I32, LANES)

    def c(self, x: int) -> ir.Constant:
        return const_i64(x)

    def up(self, x: ir.Value, m: int) -> ir.Value:
        return round_up_value(self.b, x, m)

    def mul(self, *xs: ir.Value | int) -> ir.Value:
        b, acc = self.b, None
        for x in xs:
            x = x if isinstance(x, ir.Value) else self.c(x)
            acc = x if acc is None else b.mul(acc, x)
        return acc

    def sections(self, base: ir.Value, sizes: list[ir.Value]) -> list[ir.Value]:
        """Pointers to consecutive sections of ``sizes`` bytes at ``base``, each on a line."""
        b, ptrs, off = self.b, [], self.c(0)
        for size in sizes:
            ptrs.append(gep_bytes(b, base, off))
            off = b.add(off, self.up(size, ALIGN))
        return ptrs

    # -- tiles ---------------------------------------------------------------------------

    def configure(self, name: str) -> None:
        """Load the palette (eight 16 × 64-byte tiles) for this thread."""
        cfg_type = ir.ArrayType(I8, 64)
        cfg = ir.GlobalVariable(self.m, cfg_type, f"{name}.tilecfg")
        cfg.global_constant = True
        cfg.initializer = ir.Constant(cfg_type, bytearray(tile_config(TILES)))
        self.b.call(intrinsic(self.m, "llvm.x86.ldtilecfg", VOID, [PTR]), [self.b.bitcast(cfg, PTR)])

    def release(self) -> None:
        self.b.call(intrinsic(self.m, "llvm.x86.tilerelease", VOID, []), [])

    def tile(self, name: str, *args: ir.Value | int) -> None:
        types = {
            "tileloadd64": [I8, PTR, I64],
            "tilestored64": [I8, PTR, I64],
            "tdpbf16ps": [I8, I8, I8],
            "tilezero": [I8],
        }[name]
        fn = intrinsic(self.m, f"llvm.x86.{name}", VOID, types)
        self.b.call(fn, [ir.Constant(I8, a) if isinstance(a, int) else a for a in args])

    def zero_block(self) -> None:
        for c in range(4):
            self.tile("tilezero", c)

    def block_product(self, a: tuple[ir.Value, ir.Value, ir.Value], bt: tuple[ir.Value, ir.Value, ir.Value]) -> None:
        """C0..C3 += A(a) · B(bt) for a 2 × 2 block: ``a`` = (first row tile, second row
        tile, row stride in bytes), ``bt`` likewise for the two column tiles."""
        self.tile("tileloadd64", 4, a[0], a[2])
        self.tile("tileloadd64", 5, a[1], a[2])
        self.tile("tileloadd64", 6, bt[0], bt[2])
        self.tile("tileloadd64", 7, bt[1], bt[2])
        for c, (ta, tb) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
            self.tile("tdpbf16ps", c, ta, tb)

    def store_block(self, base: ir.Value, stride: ir.Value) -> None:
        """C0..C3 to fp32 rows of ``stride`` bytes at ``base``: C1 sixteen columns right of
        C0, C2 sixteen rows below."""
        b = self.b
        down = b.mul(stride, self.c(TILE))
        right = self.c(TILE * 4)
        for c, off in enumerate((self.c(0), right, down, b.add(down, right))):
            self.tile("tilestored64", c, gep_bytes(b, base, off), stride)

    # -- bf16 ----------------------------------------------------------------------------

    def bf16_bits(self, x: ir.Value) -> ir.Value:
        """bf16 of each fp32 lane (nearest even) in the low 16 bits of an i32 lane."""
        b = self.b
        u = b.bitcast(x, self.it)
        sixteen = splat(b, ir.Constant(I32, 16), LANES)
        odd = b.and_(b.lshr(u, sixteen), splat(b, ir.Constant(I32, 1), LANES))
        r = b.add(b.add(u, splat(b, ir.Constant(I32, 0x7FFF), LANES)), odd)
        return b.lshr(r, sixteen)

    def rounded(self, bits: ir.Value) -> ir.Value:
        """The fp32 value of ``bf16_bits``' lanes."""
        b = self.b
        return b.bitcast(b.shl(bits, splat(b, ir.Constant(I32, 16), LANES)), self.vt)

    def pair_words(self, lo: ir.Value, hi: ir.Value) -> ir.Value:
        """i32 lanes holding bf16(lo) in the low half and bf16(hi) in the high one."""
        b = self.b
        return b.or_(self.bf16_bits(lo), b.shl(self.bf16_bits(hi), splat(b, ir.Constant(I32, 16), LANES)))

    def load_floats(self, row: ir.Value, col: ir.Value, n: ir.Value, ok: ir.Value) -> ir.Value:
        """Lanes ``row[col + i]`` for ``col + i < n`` where ``ok``, else 0 (a masked load:
        nothing outside the row is read)."""
        b = self.b
        rem = b.select(ok, b.sub(n, col), self.c(0))
        mask = b.icmp_signed("<", lane_iota(LANES), splat(b, rem, LANES))
        fn = intrinsic(self.m, "llvm.masked.load.v16f32.p0", self.vt, [PTR, I32, vec(I1, LANES), self.vt])
        ptr = b.gep(row, [imin(b, col, n)], source_etype=F32)
        return b.call(fn, [ptr, ir.Constant(I32, 4), mask, ir.Constant(self.vt, None)])

    def row_words(
        self,
        row: ir.Value,
        w0: ir.Value,
        n: ir.Value,
        ok: ir.Value,
        add: ir.Value | None = None,
        scale: ir.Value | None = None,
    ) -> ir.Value:
        """Pair words ``w0 .. w0+16`` (elements 2w, 2w+1) of a row of ``n`` floats, each
        element plus ``add[i]`` (a row of ``n``) and times ``scale`` first when given; zero
        past ``n`` or where not ``ok``."""
        b = self.b
        col = b.mul(w0, self.c(2))
        halves = []
        for off in (0, LANES):
            at = b.add(col, self.c(off))
            x = self.load_floats(row, at, n, ok)
            if add is not None:
                x = b.fadd(x, self.load_floats(add, at, n, ok))
            if scale is not None:
                x = b.fmul(x, splat(b, scale, LANES))
            halves.append(x)
        even = b.shuffle_vector(*halves, ir.Constant(vec(I32, LANES), list(range(0, 2 * LANES, 2))))
        odd = b.shuffle_vector(*halves, ir.Constant(vec(I32, LANES), list(range(1, 2 * LANES, 2))))
        return self.pair_words(even, odd)
