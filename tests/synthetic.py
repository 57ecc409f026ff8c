"""A tiny random gemma-embedding GGUF and a tiny SentencePiece model, built in the test run.

Small enough to load in milliseconds, shaped to exercise everything the real model does:
grouped query heads, one global and one sliding layer (with a window that bites), the dense
head, byte fallback in the tokenizer.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm

ARCH = "gemma-embedding"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar texts land close together.",
    "task: search result | query: how do I bake bread at home?",
    "title: none | text: Bread needs flour, water, salt and yeast.",
    "Numbers like 12345 and 2026 are split into digits.",
    "Whitespace   runs\tand\nnewlines are kept as they are.",
    "def add(a, b):\n    return a + b",
    "Parquet files stream through the pipeline in bounded memory.",
    "Vector indexes answer nearest neighbour queries quickly.",
    "An index built with brute force is exact but slow on large corpora.",
] * 4


@dataclass(frozen=True)
class TinyConfig:
    hidden: int = 64
    n_head: int = 2
    n_kv_head: int = 1
    head_dim: int = 32
    ffn: int = 96
    n_layers: int = 2
    context: int = 128
    sliding_window: int = 8
    swa_period: int = 2  # layer 1 is global, layer 0 slides
    dense_out: int = 128
    vocab_size: int = 384
    eps: float = 1e-6
    rope_global: float = 1_000_000.0
    rope_local: float = 10_000.0
    extra_kv: dict = field(default_factory=dict)


def train_tokenizer(vocab_size: int = 384) -> bytes:
    """Serialized SentencePiece BPE model with byte fallback, trained on CORPUS."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_by_whitespace=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return out.getvalue()


def _piece_types(sp: spm.SentencePieceProcessor) -> np.ndarray:
    checks = ((sp.is_control, 3), (sp.is_unknown, 2), (sp.is_unused, 5), (sp.is_byte, 6))
    types = np.ones(sp.get_piece_size(), np.int32)
    for i in range(len(types)):
        for check, code in checks:
            if check(i):
                types[i] = code
    return types


def random_weights(cfg: TinyConfig, vocab: int, seed: int, with_dense: bool) -> dict[str, np.ndarray]:
    """Float32 weights in numpy shape (rows = output features); norm weights include the +1."""
    rng = np.random.default_rng(seed)
    lin = lambda n, k: (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)  # noqa: E731
    norm = lambda n: (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    h, hd = cfg.hidden, cfg.head_dim
    w = {
        "token_embd.weight": (rng.standard_normal((vocab, h)) * 0.05).astype(np.float32),
        "output_norm.weight": norm(h),
    }
    for il in range(cfg.n_layers):
        p = f"blk.{il}."
        w.update(
            {
                p + "attn_norm.weight": norm(h),
                p + "attn_q.weight": lin(cfg.n_head * hd, h),
                p + "attn_k.weight": lin(cfg.n_kv_head * hd, h),
                p + "attn_v.weight": lin(cfg.n_kv_head * hd, h),
                p + "attn_q_norm.weight": norm(hd),
                p + "attn_k_norm.weight": norm(hd),
                p + "attn_output.weight": lin(h, cfg.n_head * hd),
                p + "post_attention_norm.weight": norm(h),
                p + "ffn_norm.weight": norm(h),
                p + "ffn_gate.weight": lin(cfg.ffn, h),
                p + "ffn_up.weight": lin(cfg.ffn, h),
                p + "ffn_down.weight": lin(h, cfg.ffn),
                p + "post_ffw_norm.weight": norm(h),
            }
        )
    if with_dense:
        w["dense_2.weight"] = lin(cfg.dense_out, h)
        w["dense_3.weight"] = lin(h, cfg.dense_out)
    return w


@dataclass
class TinyModel:
    path: Path
    spm_model: bytes
    weights: dict[str, np.ndarray]
    cfg: TinyConfig


def build_tiny_model(
    directory: Path,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    seed: int = 0,
    with_dense: bool = True,
    cfg: TinyConfig | None = None,
    name: str = "tiny-gemma-embedding",
    mutate: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> TinyModel:
    """Write the tiny model; `mutate` may edit the weight dict first (to make broken files)."""
    cfg = cfg or TinyConfig()
    spm_model = train_tokenizer(cfg.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    vocab = sp.get_piece_size()
    weights = random_weights(cfg, vocab, seed, with_dense)
    if mutate is not None:
        mutate(weights)
    path = Path(directory) / f"{name}-{qtype.name.lower()}.gguf"
    writer = gguf.GGUFWriter(str(path), ARCH)
    p = f"{ARCH}."
    writer.add_name(name)
    for key, value in {
        "block_count": cfg.n_layers,
        "context_length": cfg.context,
        "embedding_length": cfg.hidden,
        "feed_forward_length": cfg.ffn,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_kv_head,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "attention.sliding_window": cfg.sliding_window,
        "attention.sliding_window_pattern": cfg.swa_period,
        "pooling_type": 1,
    }.items():
        writer.add_uint32(p + key, value)
    writer.add_float32(p + "attention.layer_norm_rms_epsilon", cfg.eps)
    writer.add_float32(p + "rope.freq_base", cfg.rope_global)
    writer.add_float32(p + "rope.freq_base_swa", cfg.rope_local)
    if with_dense:
        for key, value in {
            "dense_2_feat_in": cfg.hidden,
            "dense_2_feat_out": cfg.dense_out,
            "dense_3_feat_in": cfg.dense_out,
            "dense_3_feat_out": cfg.hidden,
        }.items():
            writer.add_uint32(p + key, value)
    for key, value in cfg.extra_kv.items():
        writer.add_key_value(key, *value)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.id_to_piece(i).encode("utf-8") for i in range(vocab)])
    writer.add_token_scores([sp.get_score(i) for i in range(vocab)])
    writer.add_token_types(_piece_types(sp).tolist())
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_space_prefix(False)
    for tname, value in weights.items():
        if value.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tname, value)
        else:
            data = gguf.quants.quantize(value, qtype)
            writer.add_tensor(tname, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyModel(path, spm_model, weights, cfg)
