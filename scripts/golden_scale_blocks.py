"""How coarse can the int8 scales of EmbeddingGemma's products be? Golden cosine per block size.

The int8 products multiply Q8_0 weights (one scale per 32 weights of a row) by activations
quantized the same way, so after every 32-element block the kernel converts its integer sums
and multiplies them by the two blocks' scales: that epilogue caps the inner loop at about
three quarters of the dot instruction's peak. Scales shared by S > 32 elements would run the
epilogue once per S, but re-round the weights (and activations) on a coarser grid. This script
measures what that costs on the golden set of tests/runtime/golden (sentence-transformers
vectors), with the numpy oracle standing in for the kernels (float64 products of the re-rounded
values):

    python scripts/golden_scale_blocks.py 32 32     # activations per 32, weights per 32 (today)
    python scripts/golden_scale_blocks.py 64 64     # both per 64
    python scripts/golden_scale_blocks.py 64 32     # activations per 64, weights as stored

Prints the minimum and median cosine for the query and document prompts at 768 dims; the
golden threshold for Q8_0 is 0.999 on every text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "runtime" / "golden"


def requantize(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` (rows, K) rounded to int8 with one scale ``d = amax/127`` per ``block`` elements,
    as the quantize kernel rounds: ``round(x·(1/d))``."""
    rows, k = x.shape
    b = x.reshape(rows, k // block, block)
    d = np.abs(b).max(axis=2, keepdims=True) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    return (np.round(b * inv) * d).reshape(rows, k)


def main(act_block: int, weight_block: int) -> None:
    sys.path.insert(0, str(ROOT))
    from embedpipe.codegen.ggml_types import GGMLQuantizationType
    from embedpipe.runtime import backends
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.store import ensure_model

    class CoarseScales(backends.NumpyBackend):
        name = "coarse-scales"

        def prepare(self, tensor):
            if tensor.qtype != GGMLQuantizationType.Q8_0 or len(tensor.shape) != 2:
                return super().prepare(tensor)
            w = backends.dequantize(tensor).astype(np.float64)
            wt = np.ascontiguousarray((requantize(w, weight_block) if weight_block > 32 else w).T)
            return lambda x: (requantize(x.astype(np.float64), act_block) @ wt).astype(np.float32)

    backends.BACKENDS[CoarseScales.name] = lambda threads: CoarseScales(threads)
    meta = json.loads((GOLDEN / "embeddinggemma_golden.json").read_text(encoding="utf-8"))
    with np.load(GOLDEN / "embeddinggemma_golden.npz") as arrays:
        golden = {k: arrays[k] for k in arrays.files}
    emb = Embedder.load(ensure_model("q8_0"), backend=CoarseScales.name)
    for prompt in ("query", "document"):
        got = emb.encode([r["text"] for r in meta["texts"]], task=prompt)
        ref = golden[f"{prompt}_768"]
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(
            f"activations per {act_block}, weights per {weight_block}, {prompt}: "
            f"min {cos.min():.5f} median {np.median(cos):.6f}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 3 or not all(a.isdigit() and int(a) % 32 == 0 and int(a) > 0 for a in sys.argv[1:]):
        sys.exit("usage: golden_scale_blocks.py ACT_BLOCK WEIGHT_BLOCK  (multiples of 32 dividing every K)")
    main(int(sys.argv[1]), int(sys.argv[2]))
