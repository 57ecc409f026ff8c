"""Cosine of the ONNX Runtime peers' vectors to the sentence-transformers golden vectors.

`bench runtime` reports how far ONNX Runtime's vectors are from ours; this script says how far
they are from sentence-transformers itself, on the golden texts of tests/runtime/golden (the
same ids, truncated as sentence-transformers truncates them, one text per call), so the speed
comparison can be read against the accuracy each runtime keeps:

    python scripts/golden_onnx_cosine.py all-minilm-l6-v2 [all-mpnet-base-v2 ...]

The exports are `model.onnx` / `model.int8.onnx` in `onnx/` beside the model's cached GGUF
(scripts/export_onnx.py). Prints, per model and export, the minimum and median cosine over the
natural-language texts and the minimum over the one-word-repeated ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "runtime" / "golden"
EXPORTS = ("model.onnx", "model.int8.onnx")


def onnx_vectors(path: Path, ids: list[list[int]], cls_pooling: bool) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for seq in ids:
        x = np.array([seq], np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        hidden = session.run(None, {k: v for k, v in feed.items() if k in names})[0][0]
        pooled = hidden if hidden.ndim == 1 else (hidden[0] if cls_pooling else hidden.mean(0))
        out.append(pooled / np.linalg.norm(pooled))
    return np.array(out, np.float64)


def main(names: list[str]) -> int:
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.registry import ensure

    meta = json.loads((GOLDEN / "bert_family_golden.json").read_text(encoding="utf-8"))
    with np.load(GOLDEN / "bert_family_golden.npz") as arrays:
        golden = {k: arrays[k] for k in arrays.files}
    for name in names:
        if name not in meta["models"]:
            print(f"error: {name} has no golden vectors (known: {', '.join(meta['models'])})", file=sys.stderr)
            return 1
        path = Path(ensure(name, "q8_0", progress=False))
        emb = Embedder.load(path, backend="numpy")
        texts = [meta["texts"][i]["text"] for i in meta["models"][name]["vector_rows"]]
        degenerate = np.array([len(t.split()) > 10 and len(set(t.split())) == 1 for t in texts])
        ids = emb.tokenize(texts, task="query", truncate=True)
        cls_pooling = getattr(emb.model.cfg, "pooling", "mean") == "cls"
        for export in EXPORTS:
            onnx = path.parent / "onnx" / export
            if not onnx.is_file():
                print(f"{name} {export}: missing ({onnx}); make it with scripts/export_onnx.py")
                continue
            cos = (onnx_vectors(onnx, ids, cls_pooling) * golden[name]).sum(1)
            print(
                f"{name} {export}: min {cos[~degenerate].min():.5f} median {np.median(cos[~degenerate]):.5f}"
                f" (one word repeated: min {cos[degenerate].min():.5f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["all-minilm-l6-v2", "all-mpnet-base-v2"]))
