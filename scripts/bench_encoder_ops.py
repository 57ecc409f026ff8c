"""Encoder row-op micro-benchmark: the BERT-family attention kernel (``codegen.ir_encoder_attention``)
and ``residual_norm`` (``codegen.encoder_fused``) alone, on the shapes of MiniLM / MPNet batch
passes (``runtime.bert.PASS_TOKENS``), CPU milliseconds per call (median of rounds).

    python scripts/bench_encoder_ops.py [--threads 1,2] [--rounds 7] [--calls 100]

Attention passes: 32 sequences of 14 tokens and 8 of 59 (MiniLM: 12 heads × 32), the same
with MPNet's 12 × 64 and its (heads, L, L) position bias, and length-sorted ragged passes (as
``Embedder`` batches them: sorted 8..20 and 45..75 tokens), where the split of the (sequence,
head) pairs over threads matters. ``residual_norm``: 472 rows of 384 (MiniLM) and 768 (MPNet),
with and without two extended blocks. To compare two trees, run it under each
(``PYTHONPATH=tree``) in turn, a few times: on a shared machine, CPU time and ratios are what
survive the load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from embedpipe.codegen.encoder_attention import ENCODER_ATTENTION
from embedpipe.codegen.encoder_fused import RESIDUAL_NORM, ExtendBlocks
from embedpipe.codegen.isa import detect_isa


def attention_cases(rng: np.random.Generator) -> dict[str, tuple]:
    """name: (lengths, heads, head_dim, with position bias)."""
    return {
        "attn minilm 32x14": (np.full(32, 14), 12, 32, False),
        "attn minilm 8x59": (np.full(8, 59), 12, 32, False),
        "attn minilm 32 sorted 8..20": (np.sort(rng.integers(8, 21, 32)), 12, 32, False),
        "attn minilm 8 sorted 45..75": (np.sort(rng.integers(45, 76, 8)), 12, 32, False),
        "attn mpnet 32x14 bias": (np.full(32, 14), 12, 64, True),
        "attn mpnet 8x59 bias": (np.full(8, 59), 12, 64, True),
    }


def cpu_ms(fn, calls: int, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        c = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - c) / calls)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    isa = detect_isa()
    attention, norm = ENCODER_ATTENTION.on(isa), RESIDUAL_NORM.on(isa)
    rng = np.random.default_rng(0)
    results: dict[str, float] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        for name, (lengths, h, d, biased) in attention_cases(np.random.default_rng(1)).items():
            t = int(lengths.sum())
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            y = rng.standard_normal((t, 3 * h * d)).astype(np.float32)
            qb = (rng.standard_normal(3 * h * d) * 0.1).astype(np.float32)
            bias = rng.standard_normal((h, 128, 128)).astype(np.float32) if biased else None
            out = np.zeros((t, h * d), np.float32)
            scale = 1 / np.sqrt(d)

            def call(y=y, qb=qb, t=t, h=h, d=d, st=starts, ln=lengths, bias=bias, out=out, sc=scale, th=threads):
                attention(y, qb, t, h, d, st, ln, sc, bias, threads=th, out=out)

            results[f"{name} t={threads}"] = cpu_ms(call, args.calls, args.rounds)
        for name, d, blocks in (
            ("norm minilm 472x384", 384, None),
            ("norm minilm 472x384 ext2", 384, (3, 7)),
            ("norm mpnet 472x768 ext2", 768, (5, 11)),
        ):
            x, res = (rng.standard_normal((472, d)).astype(np.float32) for _ in range(2))
            bias, w, beta = (rng.standard_normal(d).astype(np.float32) for _ in range(3))
            ext = ExtendBlocks(d, blocks) if blocks else None
            bufs = {"out": np.zeros((472, d), np.float32)}
            if ext is not None:
                bufs["ext_out"] = np.zeros((472, ext.ext_width), np.float32)

            def call(x=x, bias=bias, res=res, w=w, beta=beta, ext=ext, bufs=bufs, th=threads):
                norm(x, bias, res, w, beta, 1e-12, ext, threads=th, **bufs)

            results[f"{name} t={threads}"] = cpu_ms(call, args.calls, args.rounds)
    width = max(len(k) for k in results)
    for name, ms in results.items():
        print(f"{name:{width}s}  cpu {ms:7.3f} ms/call")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
