"""How coarse can the int8 scales of a model's products be? Golden cosine per block size.

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
    python scripts/golden_scale_blocks.py row 32    # one activation scale per token row
    python scripts/golden_scale_blocks.py 32 row ffn_down   # one scale per weight row, one product
    python scripts/golden_scale_blocks.py row 32 --model all-minilm-l6-v2   # a BERT-family model

A block of ``row`` is one scale per row (what per-channel int8 kernels use: the epilogue runs
once per output tile); a third argument limits the change to the products whose tensor names
contain one of its comma-separated parts (the others keep per-32 scales).

Prints the minimum and median cosine for EmbeddingGemma's query and document prompts at 768
dims, or for a BERT-family model (``--model``: all-minilm-l6-v2, all-mpnet-base-v2) on its
golden texts; the golden threshold for Q8_0 is 0.999 on every text. The numpy oracle does not
extend the LayerNorm-fed products' worst blocks as the integer kernels do
(``runtime/bert_extend.py``), so for those models "32 32" is the plain per-block figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "runtime" / "golden"


ROW = 0  # block size meaning "one scale per row"
GEMMA = "embeddinggemma-300m"


def requantize(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` (rows, K) rounded to int8 with one scale ``d = amax/127`` per ``block`` elements
    (``ROW``: per row), as the quantize kernel rounds: ``round(x·(1/d))``."""
    rows, k = x.shape
    block = block or k
    b = x.reshape(rows, k // block, block)
    d = np.abs(b).max(axis=2, keepdims=True) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    return (np.round(b * inv) * d).reshape(rows, k)


def golden_sets(model: str) -> list[tuple[str, list[str], np.ndarray]]:
    """(label, texts, sentence-transformers vectors) per prompt of ``model``'s golden data."""
    if model == GEMMA:
        meta = json.loads((GOLDEN / "embeddinggemma_golden.json").read_text(encoding="utf-8"))
        texts = [r["text"] for r in meta["texts"]]
        with np.load(GOLDEN / "embeddinggemma_golden.npz") as arrays:
            return [(prompt, texts, arrays[f"{prompt}_768"]) for prompt in ("query", "document")]
    meta = json.loads((GOLDEN / "bert_family_golden.json").read_text(encoding="utf-8"))
    if model not in meta["models"]:
        sys.exit(f"no golden data for {model!r}; choose {GEMMA} or one of {', '.join(meta['models'])}")
    texts = [meta["texts"][i]["text"] for i in meta["models"][model]["vector_rows"]]
    with np.load(GOLDEN / "bert_family_golden.npz") as arrays:
        return [("query", texts, arrays[model])]


def main(act_block: int, weight_block: int, only: tuple[str, ...] = (), model: str = "") -> None:
    sys.path.insert(0, str(ROOT))
    from embedpipe.codegen.ggml_types import GGMLQuantizationType
    from embedpipe.runtime import backends
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.registry import ensure

    class CoarseScales(backends.NumpyBackend):
        name = "coarse-scales"

        def prepare(self, tensor):
            if tensor.qtype != GGMLQuantizationType.Q8_0 or len(tensor.shape) != 2:
                return super().prepare(tensor)
            chosen = not only or any(part in tensor.name for part in only)
            a_block, w_block = (act_block, weight_block) if chosen else (32, 32)
            w = backends.dequantize(tensor).astype(np.float64)
            wt = np.ascontiguousarray((requantize(w, w_block) if w_block != 32 else w).T)
            return lambda x: (requantize(x.astype(np.float64), a_block) @ wt).astype(np.float32)

    backends.BACKENDS[CoarseScales.name] = lambda threads: CoarseScales(threads)
    model = model or GEMMA
    sets = golden_sets(model)
    emb = Embedder.load(ensure(model, "q8_0", progress=False), backend=CoarseScales.name)
    for prompt, texts, ref in sets:
        got = emb.encode(texts, task=prompt, truncate=True)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        label = lambda block: block or "row"  # noqa: E731
        where = f" ({','.join(only)} only)" if only else ""
        print(
            f"{model}: activations per {label(act_block)}, weights per {label(weight_block)}{where}, {prompt}: "
            f"min {cos.min():.5f} median {np.median(cos):.6f}"
        )


def _block(arg: str) -> int:
    """A block size: ``row`` or a positive multiple of 32."""
    if arg == "row":
        return ROW
    if arg.isdigit() and int(arg) > 0 and int(arg) % 32 == 0:
        return int(arg)
    raise argparse.ArgumentTypeError(f"{arg!r} is neither row nor a positive multiple of 32")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Golden cosine of a model's products at coarser int8 scales.")
    parser.add_argument(
        "act_block", type=_block, help="activation scale block: a multiple of 32 dividing every K, or row"
    )
    parser.add_argument("weight_block", type=_block, help="weight scale block: the same choices")
    parser.add_argument("tensors", nargs="?", default="", help="comma-separated parts of the tensor names to change")
    parser.add_argument("--model", default="", help=f"registered model (default {GEMMA})")
    args = parser.parse_args()
    main(args.act_block, args.weight_block, tuple(filter(None, args.tensors.split(","))), args.model)
