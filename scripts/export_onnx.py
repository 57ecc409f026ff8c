"""ONNX exports of a BERT-family sentence-transformers checkout for `embedpipe bench runtime`.

torch is never a dependency of embedpipe: run this in the bench-only torch venv, then quantize
in embedpipe's venv (onnxruntime + onnx):

    /tmp/torchvenv/bin/python scripts/export_onnx.py export CHECKOUT OUT_DIR
    python scripts/export_onnx.py quantize OUT_DIR

`export` writes OUT_DIR/model.onnx: the transformer body (input_ids, attention_mask and, for
BERT, token_type_ids -> last_hidden_state), fp32, dynamic batch and sequence axes, with the
legacy TorchScript exporter. `quantize` writes OUT_DIR/model.int8.onnx with ONNX Runtime's
dynamic int8 quantization (weights int8 per tensor, activations quantized at run time), the
usual CPU recipe. Pooling and normalization are left to the bench peer, as in
sentence-transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path


def export(checkout: Path, out_dir: Path) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(checkout)).eval()
    tok = AutoTokenizer.from_pretrained(str(checkout))
    sample = tok(["an example sentence", "another"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}

    class Body(torch.nn.Module):  # named inputs, one output: the exporter traces positionally
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Body().eval(),
            tuple(sample[n] for n in names),
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
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
