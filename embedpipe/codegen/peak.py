"""The machine's compute peak, measured: int8 dot (the ISA's own instruction) or fp32 FMA.

An emitted loop keeps ``chains`` independent accumulators in registers and updates each once
per iteration with one dot (or FMA) instruction, so the loop is bound by the core's dot
throughput, not by the instruction's latency: with ``chains`` above latency × dots per cycle
(5 × 2 on current x86) every issue slot of the dot ports is filled.  Each accumulator's
multiplicand is its own previous value, so nothing in the loop is invariant (LLVM would hoist
a product of invariants out of ``pmaddwd``-style strategies) and no register copies are needed.

A tile-matrix unit (``matrix_units``) is probed the same way: ``MATRIX_CHAINS`` accumulator
tiles, each updated by one tile product per iteration from the same two operand tiles.

Every thread runs the loop long enough (``target_seconds``) that the Python fan-out and the
vector unit's power-up are noise, and the probe counts each thread's own CPU time: time a
thread spends descheduled on a shared machine counts against neither the peak nor the kernel
it is compared with.  ``gops()`` is the best of a few runs of Σ threads ops / thread CPU s.
"""

from __future__ import annotations

import ctypes
import time

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen import ir_q8, jit
from embedpipe.codegen.irutil import (
    F32,
    I8,
    I32,
    I64,
    PTR,
    VOID,
    const_i64,
    fmuladd,
    for_range,
    intrinsic,
    load_at,
    new_function,
    store_at,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.matrix_units import (
    TILE_ROW_BYTES,
    TILE_ROWS,
    UNITS,
    MatrixUnit,
    require_usable,
    tile_config,
    usable_units,
)
from embedpipe.codegen.threadpool import run_parallel

KINDS = ("int", "float")
PEAK_CHAINS = 24  # of the 32 vector registers of AVX-512 (16 on AVX2: the spills are loads, off the dot ports)
CALIBRATION_ITERS = 20_000
TARGET_SECONDS = 0.02
RUNS = 3
MATRIX_CHAINS = 4  # accumulator tiles of 8 (the other two hold the operands)
TILE_BYTES = TILE_ROWS * TILE_ROW_BYTES


def peak_module(isa: IsaSpec, kind: str, chains: int = PEAK_CHAINS) -> tuple[str, str]:
    """``void f(buf, iters)``: ``chains`` independent dot (or FMA) accumulators, ``iters`` rounds."""
    if kind not in KINDS:
        raise ValueError(f"peak kind {kind!r} is not one of {KINDS}")
    m = ir.Module(name=f"peak_{kind}_{chains}_{isa.name}")
    m.triple = isa.triple
    name = f"ep_peak_{kind}_{chains}_{isa.name}"
    fn, b = new_function(m, name, [("buf", PTR), ("iters", I64)])
    ty = vec(I32, isa.lanes) if kind == "int" else vec(F32, isa.lanes)
    slots = [b.alloca(ty) for _ in range(chains)]
    c = load_at(b, ty, fn.args[0], const_i64(0), 4)
    d = load_at(b, ty, fn.args[0], const_i64(4 * isa.lanes), 4)
    for s in slots:
        b.store(load_at(b, ty, fn.args[0], const_i64(8 * isa.lanes), 4), s)
    with for_range(b, const_i64(0), fn.args[1], 1, "i"):
        for s in slots:
            acc = b.load(s)
            # fp32: acc·c + d converges to a normal number (no denormal or overflow slow paths)
            step = ir_q8.group_dot(b, m, isa, acc, acc, c) if kind == "int" else fmuladd(b, m, acc, c, d)
            b.store(step, s)
    total = b.load(slots[0])
    for s in slots[1:]:
        total = b.add(total, b.load(s)) if kind == "int" else b.fadd(total, b.load(s))
    store_at(b, total, fn.args[0], const_i64(0), 4)
    b.ret_void()
    return str(m), name


def matrix_peak_module(isa: IsaSpec, unit: MatrixUnit, chains: int = MATRIX_CHAINS) -> tuple[str, str]:
    """``void f(buf, iters)``: operand tiles A, B from ``buf`` (1 KiB each), ``chains`` zeroed
    accumulator tiles each taking one ``unit`` product a round for ``iters`` rounds; the first
    accumulator is stored to ``buf + 2 KiB``. Compile it for ``unit.target(isa)``."""
    if not 1 <= chains <= 6:
        raise ValueError(f"a tile peak loop holds 1-6 accumulator tiles, not {chains}")
    m = ir.Module(name=f"peak_{unit.name}_{chains}_{isa.name}")
    m.triple = isa.triple
    name = f"ep_peak_{unit.name}_{chains}_{isa.name}"
    fn, b = new_function(m, name, [("buf", PTR), ("iters", I64)])
    buf, iters = fn.args
    tile = lambda reg: ir.Constant(I8, reg)  # noqa: E731
    a, w = chains, chains + 1
    cfg_type = ir.ArrayType(I8, 64)
    cfg = ir.GlobalVariable(m, cfg_type, f"{name}.tilecfg")
    cfg.linkage, cfg.global_constant, cfg.align = "internal", True, 64
    cfg.initializer = ir.Constant(cfg_type, bytearray(tile_config(chains + 2)))
    load = intrinsic(m, "llvm.x86.tileloadd64", VOID, [I8, PTR, I64])
    b.call(intrinsic(m, "llvm.x86.ldtilecfg", VOID, [PTR]), [b.bitcast(cfg, PTR)])
    b.call(load, [tile(a), buf, const_i64(TILE_ROW_BYTES)])
    b.call(load, [tile(w), b.gep(buf, [const_i64(TILE_BYTES)], source_etype=I8), const_i64(TILE_ROW_BYTES)])
    for c in range(chains):
        b.call(intrinsic(m, "llvm.x86.tilezero", VOID, [I8]), [tile(c)])
    product = intrinsic(m, unit.product, VOID, [I8, I8, I8])
    with for_range(b, const_i64(0), iters, 1, "i"):
        for c in range(chains):
            b.call(product, [tile(c), tile(a), tile(w)])
    out = b.gep(buf, [const_i64(2 * TILE_BYTES)], source_etype=I8)
    b.call(intrinsic(m, "llvm.x86.tilestored64", VOID, [I8, PTR, I64]), [tile(0), out, const_i64(TILE_ROW_BYTES)])
    b.call(intrinsic(m, "llvm.x86.tilerelease", VOID, []), [])
    b.ret_void()
    return str(m), name


def ops_per_instruction(isa: IsaSpec, kind: str) -> int:
    """Multiply and add counted as two ops: an int8 dot does lanes·kgroup of each."""
    return 2 * isa.lanes * (isa.kgroup if kind == "int" else 1)


class PeakProbe:
    """Back-to-back dot (int8) or FMA (fp32) instructions on ``threads`` threads; ``kind`` a
    matrix unit's name (``matrix_units.UNITS``, one the host may use) probes its tile products."""

    def __init__(
        self,
        isa: IsaSpec,
        threads: int,
        kind: str = "int",
        chains: int = PEAK_CHAINS,
        target_seconds: float = TARGET_SECONDS,
    ) -> None:
        unit = UNITS.get(kind)
        if unit is not None:  # the matrix unit's loop: operands of ones, accumulator tiles
            require_usable(unit)
            chains = min(chains, MATRIX_CHAINS)
            text, name = matrix_peak_module(isa, unit, chains)
            isa = unit.target(isa)
            start = np.frombuffer(unit.one * (2 * TILE_BYTES // unit.elem_bytes) + bytes(TILE_BYTES), np.uint8)
            self.ops_per_iter = chains * unit.ops_per_product
        else:
            text, name = peak_module(isa, kind, chains)
            # [c | d | start]: the int32 chains wrap harmlessly; the fp32 ones settle at d/(1-c) = 2.
            start = np.ones(3 * isa.lanes, np.int32) if kind == "int" else np.repeat(np.float32([0.5, 1, 1]), isa.lanes)
            self.ops_per_iter = chains * ops_per_instruction(isa, kind)
        addr = jit.host_engine().load(jit.compile_object(text, isa), [name])[name]
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr)
        self._bufs = [start.copy() for _ in range(threads)]
        self.threads = threads
        self.kind = kind
        self.iters = CALIBRATION_ITERS
        self.iters = self._calibrated(target_seconds)

    def _calibrated(self, target_seconds: float) -> int:
        self.run()  # warm-up: page in the code, power up the vector unit
        per_iter = max(self.run()[1], 1e-6) / (self.threads * self.iters)
        return max(CALIBRATION_ITERS, int(target_seconds / per_iter))

    @property
    def ops(self) -> int:
        """Ops of one ``run`` over all threads."""
        return self.threads * self.iters * self.ops_per_iter

    def run(self) -> tuple[float, float]:
        """(wall seconds, Σ thread CPU seconds) of one probe over all threads."""
        cpu = [0.0] * self.threads

        def work(i: int, _: int) -> None:
            begin = time.thread_time()
            self._fn(self._bufs[i].ctypes.data, self.iters)
            cpu[i] = time.thread_time() - begin

        start = time.perf_counter()
        run_parallel(work, [(i, i + 1) for i in range(self.threads)], self.threads)
        return time.perf_counter() - start, sum(cpu)

    def gops(self, runs: int = RUNS) -> float:
        """Best of ``runs``: threads × ops per busy thread-second (what the cores can do when
        each has a thread of its own), in G ops/s."""
        best = 0.0
        for _ in range(runs):
            _, cpu = self.run()
            best = max(best, self.threads * self.ops / max(cpu, 1e-9))
        return best / 1e9


def matrix_peaks(isa: IsaSpec, threads: int, runs: int = RUNS) -> dict[str, float]:
    """The peak of every matrix unit this process may use on ``threads`` threads, G ops/s by
    unit name (empty where there is none)."""
    return {u.name: PeakProbe(isa, threads, u.name).gops(runs) for u in usable_units()}
