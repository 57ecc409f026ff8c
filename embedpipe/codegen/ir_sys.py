"""What native thread code calls outside itself: libc's pthread, scheduler and clock functions,
the CPU's spin-wait hint, the monotonic clock in nanoseconds and the process's CPU count.

Shared by the worker pool (``ir_pool``) and the step-program runner (``program``).
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen.irutil import I32, I64, PTR, VOID, const_i64, intrinsic

AFFINITY_WORDS = 16  # a 1024-CPU sched_getaffinity mask
CLOCK_MONOTONIC = 1  # Linux's clock id (glibc and musl, x86-64 and aarch64)


class Libc:
    """The libc functions the native thread code calls, declared in one module."""

    def __init__(self, m: ir.Module) -> None:
        self.lock = intrinsic(m, "pthread_mutex_lock", I32, [PTR])
        self.trylock = intrinsic(m, "pthread_mutex_trylock", I32, [PTR])
        self.unlock = intrinsic(m, "pthread_mutex_unlock", I32, [PTR])
        self.wait = intrinsic(m, "pthread_cond_wait", I32, [PTR, PTR])
        self.signal = intrinsic(m, "pthread_cond_signal", I32, [PTR])
        self.broadcast = intrinsic(m, "pthread_cond_broadcast", I32, [PTR])
        self.create = intrinsic(m, "pthread_create", I32, [PTR, PTR, PTR, PTR])
        self.detach = intrinsic(m, "pthread_detach", I32, [I64])
        self.sched_yield = intrinsic(m, "sched_yield", I32, [])
        self.clock_gettime = intrinsic(m, "clock_gettime", I32, [I32, PTR])
        self.sched_getaffinity = intrinsic(m, "sched_getaffinity", I32, [I32, I64, PTR])


def cpu_relax(m: ir.Module, b: ir.IRBuilder) -> None:
    """A spin-wait hint for the target (``pause`` / ``yield``; nothing elsewhere)."""
    triple = str(m.triple or "")
    if triple.startswith(("x86_64", "i686", "i386")):
        b.call(intrinsic(m, "llvm.x86.sse2.pause", VOID, []), [])
    elif triple.startswith(("aarch64", "arm64")):
        b.call(intrinsic(m, "llvm.aarch64.hint", VOID, [I32]), [ir.Constant(I32, 1)])


def now_ns(b: ir.IRBuilder, libc: Libc, ts: ir.Value) -> ir.Value:
    """CLOCK_MONOTONIC in nanoseconds, through the timespec ``ts`` ({i64 s, i64 ns})."""
    b.call(libc.clock_gettime, [ir.Constant(I32, CLOCK_MONOTONIC), ts])
    sec = b.load(b.gep(ts, [const_i64(0)], source_etype=I64), typ=I64)
    nsec = b.load(b.gep(ts, [const_i64(1)], source_etype=I64), typ=I64)
    return b.add(b.mul(sec, const_i64(1_000_000_000)), nsec)


def cpu_count(b: ir.IRBuilder, libc: Libc, cached: ir.GlobalVariable) -> ir.Value:
    """The CPUs this process may run on: its affinity mask, counted once into ``cached`` (an
    i64 global that starts at 0); 1 if unreadable."""
    known = b.load(cached, typ=I64)
    with b.if_then(b.icmp_signed("==", known, const_i64(0))):
        mask = b.alloca(ir.ArrayType(I64, AFFINITY_WORDS))
        b.store(ir.Constant(ir.ArrayType(I64, AFFINITY_WORDS), None), mask)
        rc = b.call(libc.sched_getaffinity, [ir.Constant(I32, 0), const_i64(8 * AFFINITY_WORDS), mask])
        popcount = intrinsic(b.module, "llvm.ctpop.i64", I64, [I64])
        count = const_i64(0)
        for w in range(AFFINITY_WORDS):
            word = b.load(
                b.gep(mask, [const_i64(0), ir.Constant(I32, w)], source_etype=ir.ArrayType(I64, AFFINITY_WORDS)),
                typ=I64,
            )
            count = b.add(count, b.call(popcount, [word]))
        ok = b.and_(b.icmp_signed("==", rc, ir.Constant(I32, 0)), b.icmp_signed(">", count, const_i64(0)))
        b.store(b.select(ok, count, const_i64(1)), cached)
    return b.load(cached, typ=I64)
