"""Row gather: rows of a table picked by index, dequantized and scaled into fp32 rows.

The first operation of a forward pass (token embeddings by id, position embeddings or RoPE
tables by position) as a kernel, so that a recorded pass (``codegen.program``) looks its rows
up natively instead of in numpy before every replay.

One row body per table format (``ROW_FORMATS``): F32 rows, and Q8_0 rows (per 32 values an
fp16 scale ``d``, then 32 int8 codes ``q``). A value is ``(d·q)·scale`` in fp32 (``q·scale``
for F32), the products ``quant_formats`` dequantizes with and a model then scales by, so the
rows are bit-identical to the numpy lookup (``gather_reference``). Every index is checked
against the table's rows in Python before a call: in an eager call by the driver, in a
recorded step by the fill that writes a replay's indices (``record_per_run``).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.encoder_fused import address, cached_f32_word, row_ranges
from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.irutil import F32, I64, PTR, const_i64, for_range, load_at, splat, store_at, sweep, vec
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.library import KernelInputError
from embedpipe.codegen.recorder import active_recorder
from embedpipe.codegen.threads import row_parts

QK = 32
Q8_0_BLOCK_BYTES = 2 + QK  # fp16 scale, 32 int8 codes

PARAMS = [
    ("table", PTR),
    ("index", PTR),  # int64 row numbers, each in [0, rows of the table): checked by the caller
    ("out", PTR),
    ("fmt", I64),  # position in ROW_FORMATS
    ("D", I64),  # values per row
    ("scale", F32),
    ("r0", I64),
    ("r1", I64),
]


def _f32_row(b: ir.IRBuilder, isa: IsaSpec, src: ir.Value, dst: ir.Value, D: ir.Value, scale: ir.Value) -> None:
    width = 2 * isa.lanes

    def body(ty: ir.Type, i: ir.Value) -> None:
        off = b.mul(i, const_i64(4))
        s = scale if ty is F32 else splat(b, scale, width)
        store_at(b, b.fmul(load_at(b, ty, src, off, 4), s), dst, off, 4)

    sweep(b, const_i64(0), D, width, body, "f32", F32)


def _q8_0_row(b: ir.IRBuilder, isa: IsaSpec, src: ir.Value, dst: ir.Value, D: ir.Value, scale: ir.Value) -> None:
    vq, vf = vec(ir.IntType(8), QK), vec(F32, QK)
    with for_range(b, const_i64(0), b.sdiv(D, const_i64(QK)), 1, "blk") as blk:
        at = b.mul(blk, const_i64(Q8_0_BLOCK_BYTES))
        d = b.fpext(load_at(b, ir.HalfType(), src, at, 1), F32)
        q = b.sitofp(load_at(b, vq, src, b.add(at, const_i64(2)), 1), vf)
        v = b.fmul(b.fmul(q, splat(b, d, QK)), splat(b, scale, QK))
        store_at(b, v, dst, b.mul(blk, const_i64(4 * QK)), 4)


#: Table formats with a row body: (GGML type, bytes of a D-value row, row emitter).
ROW_FORMATS: tuple[tuple[GGMLQuantizationType, Callable[[int], int], Callable], ...] = (
    (GGMLQuantizationType.F32, lambda d: 4 * d, _f32_row),
    (GGMLQuantizationType.Q8_0, lambda d: d // QK * Q8_0_BLOCK_BYTES, _q8_0_row),
)
FORMAT_CODES = {qtype: code for code, (qtype, _, _) in enumerate(ROW_FORMATS)}


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    table, index, out, fmt, D, scale, r0, r1 = b.function.args
    done = b.append_basic_block("done")
    bodies = [b.append_basic_block(f"fmt{code}") for code in range(len(ROW_FORMATS))]
    switch = b.switch(fmt, done)
    for code, blk in enumerate(bodies):
        switch.add_case(const_i64(code), blk)
    i8 = ir.IntType(8)
    for (qtype, _, row), blk in zip(ROW_FORMATS, bodies):  # one loop per format: no per-row branch
        b.position_at_end(blk)
        with for_range(b, r0, r1, 1, "row") as r:
            src_row = b.mul(load_at(b, I64, index, b.mul(r, const_i64(8)), 8), _row_bytes(b, qtype, D))
            src = b.gep(table, [src_row], source_etype=i8)
            dst = b.gep(out, [b.mul(b.mul(r, D), const_i64(4))], source_etype=i8)
            row(b, isa, src, dst, D, scale)
        b.branch(done)
    b.position_at_end(done)
    b.ret_void()


def _row_bytes(b: ir.IRBuilder, qtype: GGMLQuantizationType, D: ir.Value) -> ir.Value:
    if qtype == GGMLQuantizationType.Q8_0:
        return b.mul(b.sdiv(D, const_i64(QK)), const_i64(Q8_0_BLOCK_BYTES))
    return b.mul(D, const_i64(4))


class GatherTable:
    """A table whose rows the kernel gathers, checked once: ``data`` holds ``rows`` rows of
    ``d`` values in ``qtype`` (F32 as float32 (rows, d), Q8_0 as its raw bytes)."""

    def __init__(self, data: np.ndarray, qtype: GGMLQuantizationType, rows: int, d: int) -> None:
        if qtype not in FORMAT_CODES:
            raise KernelInputError(f"gather: no row body for {qtype.name} tables")
        row_bytes = dict((t, size) for t, size, _ in ROW_FORMATS)[qtype](d)
        if d < 1 or (qtype == GGMLQuantizationType.Q8_0 and d % QK):
            raise KernelInputError(f"gather: rows of {d} values are not whole {qtype.name} rows")
        if not isinstance(data, np.ndarray) or not data.flags.c_contiguous or data.nbytes != rows * row_bytes:
            raise KernelInputError(f"gather: the table must be C-contiguous {rows} rows of {row_bytes} bytes")
        self.data, self.qtype, self.rows, self.d = data, qtype, rows, d
        self.code, self.address = FORMAT_CODES[qtype], data.ctypes.data

    def check(self, index: object) -> np.ndarray:
        """``index`` as contiguous int64 row numbers of this table (or an error)."""
        idx = np.ascontiguousarray(index, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            raise KernelInputError(f"gather: a row number outside the table's {self.rows} rows")
        return idx


def gather_reference(table: GatherTable, index: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """numpy twin: ``(d·q)·scale`` (Q8_0) or ``x·scale`` (F32) of the indexed rows."""
    idx = table.check(index)
    if table.qtype == GGMLQuantizationType.F32:
        rows = table.data.reshape(table.rows, table.d)[idx]
    else:
        blocks = table.data.reshape(table.rows, table.d // QK, Q8_0_BLOCK_BYTES)[idx]
        d = blocks[..., :2].copy().view(np.float16).astype(np.float32)
        rows = (blocks[..., 2:].view(np.int8) * d).reshape(len(idx), table.d)
    return (rows * np.float32(scale)).astype(np.float32)


def _checked_out(out: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous:
        raise KernelInputError(f"gather: out must be a C-contiguous float32 {shape} array")
    return out


def _drive(native: Native, table: GatherTable, index, scale: float = 1.0, threads: int = 1, out=None) -> np.ndarray:
    idx = table.check(index)
    out = _checked_out(out, (idx.size, table.d))
    if idx.size:
        head = (table.address, address(idx), address(out), table.code, table.d, cached_f32_word(float(scale)))
        native.run([(*head, a, b) for a, b in row_ranges(idx.size, row_parts(threads, idx.size * table.d))])
    return out


def _twin(table: GatherTable, index, scale: float = 1.0, threads: int = 1, out=None) -> np.ndarray:
    rows = gather_reference(table, index, scale)
    if out is None:
        return rows
    _checked_out(out, rows.shape)[...] = rows
    return out


_WORD = {name: i for i, (name, _) in enumerate(PARAMS)}


def record_per_run(
    native: Native,
    table: GatherTable,
    pick: Callable[[object], np.ndarray],
    scale: float,
    threads: int,
    out: np.ndarray,
) -> np.ndarray:
    """Inside a ``recorder.recording``: a gather into ``out`` (R, d) whose R row numbers each
    replay gives, as ``pick(arg)`` of its argument; the replay checks them against the table
    before the run (``Recorder.rewritten``)."""
    rec = active_recorder()
    if rec is None:
        raise KernelInputError("gather: record_per_run outside a recording")
    if out is None or getattr(out, "ndim", 0) != 2:
        raise KernelInputError(f"gather: a recorded step needs a 2-D out of rows of {table.d} values")
    n = _checked_out(out, (out.shape[0], table.d)).shape[0]
    head = (table.address, 0, address(out), table.code, table.d, cached_f32_word(float(scale)))
    native.run([(*head, a, b) for a, b in row_ranges(n, max(1, int(threads)))])

    def fill(arg: object, words: np.ndarray) -> np.ndarray:
        idx = table.check(pick(arg))
        if idx.size != n:
            raise KernelInputError(f"gather: {idx.size} row numbers for a step of {n} rows")
        words[:, _WORD["index"]] = idx.ctypes.data
        return idx

    rec.rewritten(fill)
    return out


GATHER = Kernel("gather_rows", PARAMS, _emit, twin=_twin, drive=_drive)
GATHER_MODULE = KernelModule("ep_gather", [GATHER])
