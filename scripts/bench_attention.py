"""Attention micro-benchmark: one layer's attention of a packed batch on the tiled kernel
(``codegen.attention``), CPU and wall time per call (medians).

    python scripts/bench_attention.py [--threads 2] [--tokens 64,512,2048] [--repeats 7]

Shapes are EmbeddingGemma's (3 query heads on 1 KV head, head_dim 256); each length runs as a
batch of ``max(1, 2048 // T)`` sequences, windowed (half window 256) and global.  The padded
BLAS / materialized-score path it replaced is gone (README keeps the figures of the A/B).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np

from embedpipe.codegen import attention, get_kernel_library

HEADS, KV_HEADS, HEAD_DIM, HALF_WINDOW = 3, 1, 256, 256


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", default="64,512,2048")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    lib = get_kernel_library(threads=args.threads)
    rng = np.random.default_rng(0)
    print(f"isa {lib.isa.name}, {args.threads} threads; ms per call (median of {args.repeats})")
    print(f"{'T':>5} {'seqs':>4} {'window':>6} | {'cpu':>9} {'wall':>7}")
    for t in (int(x) for x in args.tokens.split(",")):
        n = max(1, 2048 // t)
        s = n * t
        q = (rng.standard_normal((s, HEADS, HEAD_DIM)) / 16).astype(np.float32)
        k = rng.standard_normal((s, KV_HEADS, HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((s, KV_HEADS, HEAD_DIM)).astype(np.float32)
        starts, lengths = np.arange(n, dtype=np.int64) * t, np.full(n, t, np.int64)
        for hw in (HALF_WINDOW, None):
            tiled_call = partial(attention.attention, q, k, v, starts, lengths, hw, threads=args.threads, cache={})
            cpu, wall = timed(tiled_call, args.repeats)
            label = "global" if hw is None else str(hw)
            print(f"{t:>5} {n:>4} {label:>6} | {cpu:>9.2f} {wall:>7.2f}")


if __name__ == "__main__":
    main()
