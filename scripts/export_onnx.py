"""ONNX exports of a sentence-transformers checkout for `embedpipe bench runtime`.

torch is never a dependency of embedpipe: run this in the bench-only torch venv, then quantize
in embedpipe's venv (onnxruntime + onnx):

    /tmp/torchvenv/bin/python scripts/export_onnx.py export CHECKOUT OUT_DIR
    python scripts/export_onnx.py quantize OUT_DIR

`export` writes OUT_DIR/model.onnx, fp32, dynamic batch and sequence axes, with the legacy
TorchScript exporter. A checkout that is only Transformer → Pooling (→ Normalize), as the
BERT family, is exported as its transformer body (input_ids, attention_mask and, for BERT,
token_type_ids -> last_hidden_state); the bench peer pools and normalizes, as
sentence-transformers does. A checkout with more modules after pooling (EmbeddingGemma:
Dense 768→3072, Dense 3072→768, Normalize) is exported as the whole sentence-transformers
pipeline (input_ids, attention_mask -> sentence_embedding), so the projections are part of the
graph. Attention is traced in its eager form; models with per-layer attention types (Gemma 3's
sliding and full layers) get their masks built here from tensor ops (`additive_masks`).

`quantize` writes OUT_DIR/model.int8.onnx with ONNX Runtime's dynamic int8 quantization
(weights int8 per tensor, activations quantized at run time), the usual CPU recipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# sentence-transformers modules the body export leaves to the bench peer.
BODY_MODULES = {"Transformer", "Pooling", "Normalize"}


def module_types(checkout: Path) -> list[str]:
    path = checkout / "modules.json"
    if not path.is_file():
        return ["Transformer"]
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads(path.read_text())]


def additive_masks(config, attention_mask):
    """The per-layer-type attention masks a model with ``layer_types`` takes precomputed (as
    ``generate`` passes them), built from tensor ops: transformers builds them with ``vmap``,
    which the TorchScript tracer cannot record. Additive fp32 (batch, 1, T, T): keys outside
    the padding mask, and for sliding layers farther than ``sliding_window`` − 1 positions
    (EmbeddingGemma's bidirectional window), get the fp32 minimum."""
    import torch

    length = attention_mask.shape[1]
    pos = torch.arange(length)
    keys = attention_mask[:, None, None, :].bool()
    lowest = torch.finfo(torch.float32).min
    masks = {}
    for kind in set(config.layer_types):
        allowed = keys
        if kind == "sliding_attention":
            allowed = allowed & ((pos[:, None] - pos[None, :]).abs() < config.sliding_window)[None, None]
        masks[kind] = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, lowest)
    return masks


def export(checkout: Path, out_dir: Path) -> Path:
    import torch

    pipeline = not set(module_types(checkout)) <= BODY_MODULES
    if pipeline:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(checkout), device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
        model, tok, output = st[0].auto_model, st.tokenizer, "sentence_embedding"
    else:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(str(checkout), attn_implementation="eager").eval()
        tok, output = AutoTokenizer.from_pretrained(str(checkout)), "last_hidden_state"
    sample = tok(["an example sentence to trace", "another"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    if pipeline:
        names = [n for n in names if n != "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if pipeline else {0: "batch", 1: "sequence"}
    layered = hasattr(model.config, "layer_types")

    class Graph(torch.nn.Module):  # named inputs, one output: the exporter traces positionally
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.after = torch.nn.ModuleList(list(st)[1:] if pipeline else [])

        def forward(self, *inputs):
            features = dict(zip(names, inputs))
            kwargs = dict(features)
            if layered:
                kwargs["attention_mask"] = additive_masks(model.config, features["attention_mask"])
                kwargs["use_cache"] = False
            hidden = self.model(**kwargs).last_hidden_state
            if not pipeline:
                return hidden
            features["token_embeddings"] = hidden
            for module in self.after:  # pooling, dense projections, normalization
                features = module(features)
            return features["sentence_embedding"]

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Graph().eval(),
            tuple(sample[n] for n in names),
            str(out),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return out


def quantize(out_dir: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = out_dir / "model.int8.onnx"
    quantize_dynamic(str(out_dir / "model.onnx"), str(out), weight_type=QuantType.QInt8)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "export":
        print(export(Path(sys.argv[2]), Path(sys.argv[3])))
    elif len(sys.argv) == 3 and sys.argv[1] == "quantize":
        print(quantize(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
