"""Which blocks of a BERT-family layer's LayerNorm outputs the integer products extend, and how
that choice is calibrated and remembered.

Quantizing a LayerNorm output to int8 per 32-element block loses most where a few features
have outlier magnitudes; those blocks get a second, residual level (``codegen.encoder_fused``
makes it with the LayerNorm) and the weight a copy of their columns (``extend_columns``). A
calibration pass ranks the blocks by their quantization error (``BlockErrors``); the choice is
kept in the backend's weight cache, so a warm load skips the tokenizer and the pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedpipe.codegen.encoder_fused import QK, ExtendBlocks, grid_reference
from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES
from embedpipe.codegen.library import KernelInputError
from embedpipe.runtime import bench_texts
from embedpipe.runtime.gguf_file import DerivedTensor, WeightTensor

#: Products whose input is a LayerNorm output. Quantizing those activations to int8 per
#: 32-element block (as the integer kernels do) costs ~0.001 of cosine to sentence-transformers
#: over the 12 of them in MiniLM, and most of it sits in a few blocks: those holding the
#: features with outlier magnitudes, the same in every layer. So on the integer kernels these
#: products take their input extended by the residuals of its worst blocks
#: (``codegen.encoder_fused``, made by the LayerNorm kernel that produces the input) and a
#: weight extended by those blocks' columns; the others (attention output, FFN down) take
#: plain int8 activations.
EXTENDED_INPUT_PRODUCTS: tuple[str, ...] = ("attn_qkv", "ffn_up")

#: Blocks extended per product input: within 1e-4 of cosine to sentence-transformers of
#: extending every block (the full two-level split, twice the multiply-adds) on the golden
#: texts, for MiniLM (2 of 12 blocks) and MPNet (2 of 24).
EXTENDED_BLOCKS = 2

#: Calibration text that ranks the blocks at load (a pass of ~250 tokens): plain English, as
#: random token ids are not: their activations miss outlier features real text has, and the
#: blocks they pick cost ~0.0008 of the worst golden cosine. Different English sentences pick
#: the same blocks.
CALIBRATION_TEXTS: tuple[str, ...] = bench_texts.SENTENCES[:12]


#: ``family`` of the weight-cache entry that records the calibration's blocks.
EXTENSIONS_FAMILY = "encoder-extended-blocks"


def extend_columns(tensor: WeightTensor | DerivedTensor, extend: ExtendBlocks) -> DerivedTensor:
    """``[W | W_sel]``: each row followed by its stored blocks at the selected columns (whole
    32-element blocks, bytes copied: the same values, no requantization)."""
    n, k = tensor.shape
    size = GGML_QUANT_SIZES[tensor.qtype][1]

    def build() -> np.ndarray:
        blocks = tensor.rows().reshape(n, k // QK, size)
        return np.concatenate([blocks, blocks[:, extend.array]], axis=1).reshape(-1)

    name = f"{tensor.name}+lo{'.'.join(str(i) for i in extend.blocks)}"
    return DerivedTensor(name, tensor.qtype, (n, extend.ext_width), build)


class BlockErrors:
    """Per product input, the squared Q8_0 quantization error of each 32-element block summed
    over the calibration tokens."""

    def __init__(self) -> None:
        self.energy: dict[tuple[int, str], np.ndarray] = {}

    def __call__(self, key: tuple[int, str], x: np.ndarray) -> None:
        err = (x - grid_reference(x)).reshape(len(x), -1, QK)
        self.energy[key] = self.energy.get(key, 0) + np.einsum("tbk,tbk->b", err, err, dtype=np.float64)

    def worst(self, key: tuple[int, str], count: int) -> list[int]:
        """The ``count`` blocks with the most error, in block order."""
        return sorted(np.argsort(-self.energy[key], kind="stable")[:count].tolist())


def extensions_key(n_layers: int) -> tuple[str, int, tuple[int, ...]]:
    """Weight-cache entry (name, type, shape) of the calibration's choice: the name changes
    with what decides it (block count, calibration text)."""
    digest = hashlib.sha256("\n".join((str(EXTENDED_BLOCKS), *CALIBRATION_TEXTS)).encode()).hexdigest()[:16]
    shape = (n_layers, len(EXTENDED_INPUT_PRODUCTS), EXTENDED_BLOCKS)
    return f"encoder.extended_blocks#{digest}", 0, shape


def cached_extensions(cache: Any, cfg: Any) -> list[dict[str, ExtendBlocks | None]] | None:
    """Per layer, the blocks each product is extended by, from the weight ``cache`` (None when
    there is none or it has no record of this model's calibration)."""
    hit = cache.get(*extensions_key(cfg.n_layers)) if cache is not None else None
    if hit is None or hit.family != EXTENSIONS_FAMILY or len(hit.arrays) != 1:
        return None
    known = []
    try:
        for row in hit.arrays[0]:
            picked = [[int(i) for i in blocks if i >= 0] for blocks in row]
            exts = [ExtendBlocks(cfg.hidden, p) if p else None for p in picked]
            known.append(dict(zip(EXTENDED_INPUT_PRODUCTS, exts)))
    except (KernelInputError, ValueError, TypeError):
        return None
    return known


def remember_extensions(cache: Any, cfg: Any, layers: Sequence[Any]) -> None:
    """Record in the weight ``cache`` (if any) the blocks each layer's products are extended by."""
    if cache is None:
        return
    name, qtype, shape = extensions_key(cfg.n_layers)
    table = np.full(shape, -1, np.int64)
    for layer in layers:
        for j, ext in enumerate((layer.qkv_ext, layer.up_ext)):
            if ext is not None:
                table[layer.il, j, : len(ext.blocks)] = ext.array
    from embedpipe.runtime.weight_cache_file import CachedArrays

    cache.put(name, qtype, shape, CachedArrays(EXTENSIONS_FAMILY, (table,)))
