"""The machine's compute peak, measured: int8 dot (the ISA's own instruction) or fp32 FMA.

An emitted loop keeps ``chains`` independent accumulators in registers and updates each once
per iteration with one dot (or FMA) instruction, so the loop is bound by the core's dot
throughput, not by the instruction's latency: with ``chains`` above latency × dots per cycle
(5 × 2 on current x86) every issue slot of the dot ports is filled.  Each accumulator's
multiplicand is its own previous value, so nothing in the loop is invariant (LLVM would hoist
a product of invariants out of ``pmaddwd``-style strategies) and no register copies are needed.

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
    I32,
    I64,
    PTR,
    const_i64,
    fmuladd,
    for_range,
    load_at,
    new_function,
    store_at,
    vec,
)
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.threadpool import run_parallel

KINDS = ("int", "float")
PEAK_CHAINS = 24  # of the 32 vector registers of AVX-512 (16 on AVX2: the spills are loads, off the dot ports)
CALIBRATION_ITERS = 20_000
TARGET_SECONDS = 0.02
RUNS = 3


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


def ops_per_instruction(isa: IsaSpec, kind: str) -> int:
    """Multiply and add counted as two ops: an int8 dot does lanes·kgroup of each."""
    return 2 * isa.lanes * (isa.kgroup if kind == "int" else 1)


class PeakProbe:
    """Back-to-back dot (int8) or FMA (fp32) instructions on ``threads`` threads."""

    def __init__(
        self,
        isa: IsaSpec,
        threads: int,
        kind: str = "int",
        chains: int = PEAK_CHAINS,
        target_seconds: float = TARGET_SECONDS,
    ) -> None:
        text, name = peak_module(isa, kind, chains)
        addr = jit.host_engine().load(jit.compile_object(text, isa), [name])[name]
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr)
        # [c | d | start]: the int32 chains wrap harmlessly; the fp32 ones settle at d/(1-c) = 2.
        start = np.ones(3 * isa.lanes, np.int32) if kind == "int" else np.repeat(np.float32([0.5, 1, 1]), isa.lanes)
        self._bufs = [start.copy() for _ in range(threads)]
        self.threads = threads
        self.kind = kind
        self.ops_per_iter = chains * ops_per_instruction(isa, kind)
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
