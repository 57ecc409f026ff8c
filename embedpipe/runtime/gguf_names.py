"""Declarative tables that map a Hugging Face EmbeddingGemma checkout onto llama.cpp's GGUF names.

The names and keys are those llama.cpp's `convert_hf_to_gguf.py` writes for the
`gemma-embedding` architecture, so files move freely between embedpipe and llama.cpp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

ARCH = "gemma-embedding"

#: HF architectures (config.json "architectures") this converter accepts.
HF_ARCHITECTURES: frozenset[str] = frozenset({"Gemma3TextModel"})

#: Per-layer HF suffix (after "layers.N.") -> GGUF suffix (after "blk.N.").
LAYER_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

#: Model-level HF name -> GGUF name.
GLOBAL_TENSORS: dict[str, str] = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
}

#: sentence-transformers Dense module directory -> (GGUF tensor name, GGUF key prefix).
DENSE_MODULES: dict[str, str] = {
    "2_Dense": "dense_2",
    "3_Dense": "dense_3",
}

_LAYER_RE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


def hf_to_gguf_name(hf_name: str) -> str | None:
    """Map one HF tensor name of the transformer body to its GGUF name (None if unknown)."""
    m = _LAYER_RE.match(hf_name)
    if m:
        suffix = LAYER_TENSORS.get(m.group(2))
        return f"blk.{int(m.group(1))}.{suffix}" if suffix else None
    bare = hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name
    return GLOBAL_TENSORS.get(bare)


def is_norm(gguf_name: str) -> bool:
    """Gemma RMSNorm weights are stored in HF without the +1 that the forward pass applies."""
    return gguf_name.endswith("norm.weight")


def tensor_sort_key(gguf_name: str) -> tuple[int, str]:
    """Order of llama.cpp's quantized files: model-level tensors by name, then blocks in order."""
    m = re.match(r"^blk\.(\d+)\.(.+)$", gguf_name)
    return (int(m.group(1)), m.group(2)) if m else (-1, gguf_name)


def expected_shapes(cfg: HParams) -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy shape (HF orientation, rows = output features) for the body."""
    d, hd, ff = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    per_layer = {
        "attn_norm.weight": (d,),
        "attn_q.weight": (cfg.n_head * hd, d),
        "attn_k.weight": (cfg.n_head_kv * hd, d),
        "attn_v.weight": (cfg.n_head_kv * hd, d),
        "attn_output.weight": (d, cfg.n_head * hd),
        "attn_q_norm.weight": (hd,),
        "attn_k_norm.weight": (hd,),
        "post_attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
        "post_ffw_norm.weight": (d,),
        "ffn_gate.weight": (ff, d),
        "ffn_up.weight": (ff, d),
        "ffn_down.weight": (d, ff),
    }
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (cfg.vocab_size, d),
        "output_norm.weight": (d,),
    }
    for il in range(cfg.n_layer):
        for suffix, shape in per_layer.items():
            shapes[f"blk.{il}.{suffix}"] = shape
    return shapes


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters the converter reads from config.json."""

    n_layer: int
    context_length: int
    hidden_size: int
    intermediate_size: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    rope_theta_swa: float
    sliding_window: int
    vocab_size: int


#: HParams field -> (config.json key, default or None if required). Defaults are Gemma3's.
CONFIG_KEYS: dict[str, tuple[str, object]] = {
    "n_layer": ("num_hidden_layers", None),
    "context_length": ("max_position_embeddings", 131072),
    "hidden_size": ("hidden_size", None),
    "intermediate_size": ("intermediate_size", None),
    "n_head": ("num_attention_heads", 8),
    "n_head_kv": ("num_key_value_heads", 4),
    "head_dim": ("head_dim", 256),
    "rms_eps": ("rms_norm_eps", 1e-6),
    "rope_theta": ("rope_theta", 1_000_000.0),
    "rope_theta_swa": ("rope_local_base_freq", 10_000.0),
    "sliding_window": ("sliding_window", None),
    "vocab_size": ("vocab_size", None),
}

#: Order and writer method of the architecture keys, as in llama.cpp's files.
ARCH_KV_WRITERS: tuple[tuple[str, str], ...] = (
    ("add_block_count", "n_layer"),
    ("add_context_length", "context_length"),
    ("add_embedding_length", "hidden_size"),
    ("add_feed_forward_length", "intermediate_size"),
    ("add_head_count", "n_head"),
    ("add_head_count_kv", "n_head_kv"),
    ("add_rope_freq_base", "rope_theta"),
    ("add_rope_freq_base_swa", "rope_theta_swa"),
    ("add_layer_norm_rms_eps", "rms_eps"),
    ("add_key_length", "head_dim"),
    ("add_value_length", "head_dim"),
    ("add_sliding_window", "sliding_window"),
)

#: sentence-transformers Pooling config flag -> GGUF pooling type (first true flag wins).
POOLING_FLAGS: tuple[tuple[str, gguf.PoolingType], ...] = (
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
    ("pooling_mode_lasttoken", gguf.PoolingType.LAST),
)

#: --quant choice -> (GGML type of 2-D weights, general.file_type).
QUANTS: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
