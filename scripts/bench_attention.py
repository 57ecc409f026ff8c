"""Attention micro-benchmark: one layer's attention of a packed batch, tiled kernel vs the
previous path, CPU and wall time per call (medians, same run).

    python scripts/bench_attention.py [--threads 2] [--tokens 64,512,2048] [--repeats 7]
    python scripts/bench_attention.py --forward long,xlong [--repeats 4]

Shapes are EmbeddingGemma's (3 query heads on 1 KV head, head_dim 256); each length runs as a
batch of ``max(1, 2048 // T)`` sequences, windowed (half window 256) and global.  The previous
path is what the forward pass ran before the tiled kernel and what BERT still runs: short
sequences as padded BLAS products per length bucket, long ones on the fp32 matmul kernel
with a materialized T×T score matrix and the banded softmax kernel.

``--forward KINDS`` instead embeds the ``bench runtime`` documents of each kind (96 long,
16 extra-long texts, batches of 32) with EmbeddingGemma Q8_0 on the JIT backend, the
attention call switched between the two paths in alternating runs of one process, and prints
the median process CPU time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np

from embedpipe.codegen import get_kernel_library, ir_attention
from embedpipe.runtime import ops

HEADS, KV_HEADS, HEAD_DIM, HALF_WINDOW = 3, 1, 256, 256


def previous_path(jit: ops.JitOps, q, k, v, starts, lengths, half_window):
    out = np.empty((q.shape[0], HEADS * HEAD_DIM), np.float32)
    with jit.session():
        for i in np.flatnonzero(lengths >= ops.LONG_SEQUENCE):
            a, b = int(starts[i]), int(starts[i] + lengths[i])
            out[a:b] = jit.long_attention(q[a:b], k[a:b], v[a:b], half_window)
        jit.map(
            lambda idx: ops.padded_attention(q, k, v, starts[idx], lengths[idx], half_window, out),
            ops.length_buckets(lengths),
        )
    return out


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


def forward_ab(kinds: list[str], threads: int, repeats: int) -> None:
    from embedpipe.runtime.bench_texts import documents
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.store import ensure_model

    tiled = ops.JitOps.attention

    def previous(self, q, k, v, plan, half_window):
        return previous_path(self, q, k, v, plan.starts, plan.lengths, half_window)

    paths = {"previous": previous, "tiled": tiled}
    emb = Embedder.load(ensure_model("q8_0"), backend="jit", threads=threads)
    print(f"EmbeddingGemma Q8_0, jit, {threads} threads; process CPU s per batch (median of {repeats})")
    for kind in kinds:
        docs = documents(kind, 16 if kind == "xlong" else 96)
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():  # warm both
            ops.JitOps.attention = fn
            emb.encode(docs[:4], batch_size=32)
        for r in range(repeats):
            for name in list(paths)[:: 1 if r % 2 == 0 else -1]:
                ops.JitOps.attention = paths[name]
                c = time.process_time()
                emb.encode(docs, batch_size=32)
                cpu[name].append(time.process_time() - c)
        ops.JitOps.attention = tiled
        prev, new = statistics.median(cpu["previous"]), statistics.median(cpu["tiled"])
        print(f"{kind:>6} x{len(docs)}: previous {prev:.2f} s, tiled {new:.2f} s, previous/tiled {prev / new:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", default="64,512,2048")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--forward", default="", help="document kinds (long,xlong): whole forward passes instead")
    args = ap.parse_args()
    if args.forward:
        forward_ab(args.forward.split(","), args.threads, args.repeats)
        return
    lib = get_kernel_library(threads=args.threads)
    jit = ops.JitOps(lib)
    rng = np.random.default_rng(0)
    print(f"isa {lib.isa.name}, {args.threads} threads; ms per call (median of {args.repeats})")
    print(
        f"{'T':>5} {'seqs':>4} {'window':>6} | {'tiled cpu':>9} {'wall':>7} | {'prev cpu':>9} {'wall':>7} | cpu ratio"
    )
    for t in (int(x) for x in args.tokens.split(",")):
        n = max(1, 2048 // t)
        s = n * t
        q = (rng.standard_normal((s, HEADS, HEAD_DIM)) / 16).astype(np.float32)
        k = rng.standard_normal((s, KV_HEADS, HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((s, KV_HEADS, HEAD_DIM)).astype(np.float32)
        starts, lengths = np.arange(n, dtype=np.int64) * t, np.full(n, t, np.int64)
        for hw in (HALF_WINDOW, None):
            tiled_call = partial(ir_attention.attention, q, k, v, starts, lengths, hw, threads=args.threads, cache={})
            tiled = timed(tiled_call, args.repeats)
            prev = timed(partial(previous_path, jit, q, k, v, starts, lengths, hw), args.repeats)
            label = "global" if hw is None else str(hw)
            print(
                f"{t:>5} {n:>4} {label:>6} | {tiled[0]:>9.2f} {tiled[1]:>7.2f} | {prev[0]:>9.2f} {prev[1]:>7.2f} |"
                f" {prev[0] / tiled[0]:.2f}x"
            )


if __name__ == "__main__":
    main()
