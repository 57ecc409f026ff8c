"""Memory-read bandwidth: a kernel that streams a buffer once and XORs its 32-bit words.

Single-text inference reads every weight once per forward, so its floor is the bytes of
weights divided by the rate this machine reads memory. ``read_bandwidth`` measures that rate
the way the matmul kernels read: full-width vector loads, one contiguous slice per thread on
the native pool. The XOR of all words is returned (so no load is optimised away) and is what
the numpy twin computes exactly, which makes the kernel testable like any other.
"""

from __future__ import annotations

import time

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import I32, I64, PTR, const_i64, elem_ptr, for_range, var, vec
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.threads import default_threads, split_range

UNROLL = 4  # independent accumulators: loads in flight per thread
# Each thread's slice starts on a page (and so on a cache line) and holds whole unrolled steps.
SLICE_ALIGN = 4096


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """``out[0] = XOR of words src[0 .. n)``, ``n`` a multiple of lanes·UNROLL."""
    src, n, out = b.function.args
    vt = vec(I32, isa.lanes)
    accs = [var(b, vt, ir.Constant(vt, None)) for _ in range(UNROLL)]
    with for_range(b, const_i64(0), n, isa.lanes * UNROLL, "words") as i:
        for u, acc in enumerate(accs):
            v = b.load(elem_ptr(b, I32, src, b.add(i, const_i64(u * isa.lanes))), typ=vt, align=4)
            b.store(b.xor(b.load(acc), v), acc)
    total = b.load(accs[0])
    for acc in accs[1:]:
        total = b.xor(total, b.load(acc))
    word = b.extract_element(total, ir.Constant(I32, 0))
    for lane in range(1, isa.lanes):
        word = b.xor(word, b.extract_element(total, ir.Constant(I32, lane)))
    b.store(word, out)
    b.ret_void()


def xor_words_reference(buf: np.ndarray, threads: int | None = None) -> int:
    """numpy twin: XOR of every 32-bit word of ``buf``."""
    return int(np.bitwise_xor.reduce(_words(buf))) & 0xFFFFFFFF


def _words(buf: np.ndarray) -> np.ndarray:
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous or buf.nbytes % SLICE_ALIGN:
        raise ValueError(f"read_bandwidth: buffer must be a contiguous array of a multiple of {SLICE_ALIGN} bytes")
    return buf.reshape(-1).view(np.uint32)


def _drive(native: Native, buf: np.ndarray, threads: int | None = None) -> int:
    words = _words(buf)
    parts = threads or default_threads()
    outs = np.zeros(max(1, parts) * 16, np.uint32)  # one cache line per thread's result
    per_page = SLICE_ALIGN // 4
    slices = split_range(0, words.size // per_page, parts)
    native.run(
        [
            (words.ctypes.data + 4 * lo * per_page, (hi - lo) * per_page, outs.ctypes.data + 64 * i)
            for i, (lo, hi) in enumerate(slices)
        ]
    )
    return int(np.bitwise_xor.reduce(outs[::16][: len(slices)])) & 0xFFFFFFFF


XOR_WORDS = Kernel("xor_words", [("src", PTR), ("n", I64), ("out", PTR)], _emit, twin=xor_words_reference, drive=_drive)
BANDWIDTH_MODULE = KernelModule("ep_bandwidth", [XOR_WORDS])


def read_bandwidth(threads: int | None = None, megabytes: int = 256, repeats: int = 5) -> float:
    """Best-of-``repeats`` GB/s at which ``threads`` threads stream a buffer far larger than
    the caches (numpy twin when LLVM cannot build the kernel, which measures much less)."""
    buf = np.ones(megabytes << 20, np.uint8)  # written once: every page is resident
    XOR_WORDS(buf, threads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        XOR_WORDS(buf, threads)
        best = min(best, time.perf_counter() - start)
    return buf.nbytes / best / 1e9
