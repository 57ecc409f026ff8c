"""Latency of calls on the native worker pool (``codegen/ir_pool.py``): medians and tails of
many calls, for the README's thread-pool figures.

    python scripts/bench_fork.py --threads 8 --items 2            # a 2-item GELU fork, 8 threads
    python scripts/bench_fork.py --threads 2 --product 384,1536 --tokens 32,128,512 --busy

``--items N``: a GELU over 4 096 floats split into N items (the fork itself is most of it).
``--product K,N``: a Q8_0 product of K × N weights at each ``--tokens`` T, split as the model
splits it.  ``--busy``: a busy-loop process runs beside the measurement (a competing process
on the cores, as on a loaded host). Compare commits by running both in turn.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType

from embedpipe.codegen import get_kernel_library
from embedpipe.codegen.bench import _weight, call_seconds
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.threads import CACHE_LINE, split_range


def percentiles(fn, calls: int) -> str:
    p50, p90, p99 = np.percentile(np.array(call_seconds(fn, calls, warmup=20)) * 1e6, [50, 90, 99])
    return f"p50/p90/p99 {p50:.1f}/{p90:.1f}/{p99:.1f} µs"


def fork_rows(lib, items: int, calls: int) -> None:
    a, b = np.ones(4096, np.float32), np.ones(4096, np.float32)
    out = np.empty_like(a)
    head = (a.ctypes.data, b.ctypes.data, out.ctypes.data)
    every = [(*head, lo, hi) for lo, hi in split_range(0, a.size, lib.threads, 32)]
    lib.fork("gelu_mul", every)  # start every worker the library may use
    parts = [(*head, lo, hi) for lo, hi in split_range(0, a.size, items, 32)]
    print(
        f"threads={lib.threads} GELU fork of {items} items: {percentiles(lambda: lib.fork('gelu_mul', parts), calls)}"
    )


def product_rows(lib, k: int, n: int, tokens: list[int], calls: int) -> None:
    rng = np.random.default_rng(0)
    raw, _ = _weight(GGMLQuantizationType.Q8_0, n, k, rng)
    mm = lib.prepare_matmul(GGMLQuantizationType.Q8_0, raw, n, k)
    for t in tokens:
        x = rng.standard_normal((t, k)).astype(np.float32)
        y = aligned_empty((t, n), np.float32, CACHE_LINE)
        count = calls if t < 512 else max(1, calls // 4)
        print(f"threads={lib.threads} Q8_0 K={k} N={n} T={t}: {percentiles(lambda x=x, y=y: mm(x, y), count)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, help="GELU fork of this many items")
    ap.add_argument("--product", help="K,N of a Q8_0 product")
    ap.add_argument("--tokens", default="32,128,512", help="T of the product, comma-separated")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--busy", action="store_true", help="a busy-loop process beside the measurement")
    args = ap.parse_args()
    if args.items is None and args.product is None:
        ap.error("give --items, --product or both")
    lib = get_kernel_library(None, args.threads)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        if args.items is not None:
            fork_rows(lib, args.items, args.calls)
        if args.product is not None:
            k, n = (int(v) for v in args.product.split(","))
            product_rows(lib, k, n, [int(t) for t in args.tokens.split(",")], args.calls // 2)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


if __name__ == "__main__":
    main()
