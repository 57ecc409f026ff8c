"""One post-LayerNorm encoder block's weights as the backend runs them: the Q|K|V and FFN-up
products (one fused product per input, or outputs side by side where the tensor types differ),
the output and down products, the biases and LayerNorm parameters, and the extension of the
two LayerNorm-fed products by their worst-quantized input blocks (``bert_extend``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedpipe.codegen.encoder_fused import QK, ExtendBlocks
from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES
from embedpipe.runtime.backends import Backend, read_vector
from embedpipe.runtime.bert_extend import EXTENDED_INPUT_PRODUCTS, extend_columns
from embedpipe.runtime.gemma_embedding import fuse_rows
from embedpipe.runtime.gguf_file import GGUFModelFile, WeightTensor


class _Concat:
    """Products of weights that share an input but differ in type, outputs side by side."""

    def __init__(self, parts: list[Callable[[np.ndarray], np.ndarray]]):
        self.parts = parts
        families = {getattr(p, "family", None) for p in parts}
        self.family = families.pop() if len(families) == 1 else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([part(x) for part in self.parts], axis=1)


def _prepare(backend: Backend, name: str, tensors: list[WeightTensor]) -> Callable[[np.ndarray], np.ndarray]:
    """One product for weights that share an input (separate ones, outputs concatenated, when
    their types differ, as in mixed-quant files)."""
    if len(tensors) == 1:
        return backend.prepare(tensors[0])
    if all(t.qtype == tensors[0].qtype for t in tensors):
        return backend.prepare(fuse_rows(name, tensors))
    return _Concat([backend.prepare(t) for t in tensors])


def _quantizes_input(product: object) -> bool:
    """Whether a prepared product quantizes its activations to int8 (the integer kernels)."""
    return getattr(product, "family", None) == "int"


class EncoderLayer:
    """One block's prepared products and parameters (``blk.{il}.*`` of a ``bert`` / ``mpnet`` file)."""

    def __init__(self, mf: GGUFModelFile, il: int, backend: Backend, extend: dict[str, ExtendBlocks | None]):
        """``extend``: the blocks each of ``EXTENDED_INPUT_PRODUCTS`` is extended by (a known
        calibration); a product missing from it is prepared plain, for a calibration pass."""
        t = lambda stem: mf.tensors[f"blk.{il}.{stem}.weight"]
        b = lambda stem: read_vector(mf, f"blk.{il}.{stem}.bias")
        prep = lambda name, tensors: _prepare(backend, f"blk.{il}.{name}", tensors)
        self.il = il
        self.sources = {
            "attn_qkv": [t("attn_q"), t("attn_k"), t("attn_v")],
            "ffn_up": [t("ffn_up")],
        }
        self.qkv_ext: ExtendBlocks | None = None
        self.up_ext: ExtendBlocks | None = None
        for product in EXTENDED_INPUT_PRODUCTS:
            blocks = extend.get(product)
            if blocks is not None:
                self.extend(backend, product, blocks)
            elif product == "attn_qkv":
                self.w_qkv = prep(product, self.sources[product])
            else:
                self.w_up = prep(product, self.sources[product])
        self.b_qkv = np.concatenate([b("attn_q"), b("attn_k"), b("attn_v")])
        self.wo, self.bo = prep("attn_output", [t("attn_output")]), b("attn_output")
        self.b_up = b("ffn_up")
        self.w_down, self.b_down = prep("ffn_down", [t("ffn_down")]), b("ffn_down")
        self.attn_norm = (read_vector(mf, f"blk.{il}.attn_output_norm.weight"), b("attn_output_norm"))
        self.out_norm = (read_vector(mf, f"blk.{il}.layer_output_norm.weight"), b("layer_output_norm"))

    def extendable(self, product: str) -> bool:
        """Whether ``product`` runs on int8 activations from a weight stored in 32-element
        blocks that can be extended by copying (Q8_0, Q4_0; not K-quants or mixed types)."""
        tensors = self.sources[product]
        same = all(x.qtype == tensors[0].qtype for x in tensors)
        fn = self.w_qkv if product == "attn_qkv" else self.w_up
        return same and _quantizes_input(fn) and GGML_QUANT_SIZES[tensors[0].qtype][0] == QK

    def extend(self, backend: Backend, product: str, extend: ExtendBlocks) -> None:
        """Run ``product`` on inputs extended by ``extend`` from now on."""
        tensors = self.sources[product]
        fused = tensors[0] if len(tensors) == 1 else fuse_rows(f"blk.{self.il}.{product}", tensors)
        fn = backend.prepare(extend_columns(fused, extend))
        if product == "attn_qkv":
            self.w_qkv, self.qkv_ext = fn, extend
        else:
            self.w_up, self.up_ext = fn, extend
