"""A tiny random sentence-transformers EmbeddingGemma checkout, for converter and store tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import sentencepiece as spm
from safetensors.numpy import save_file

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors in a shared space.",
    "A tiny tokenizer is trained inside the test suite.",
    "Gemma models normalize with RMSNorm and rotate with RoPE.",
    "Search results, questions and documents all become vectors.",
    "Zebras, quokkas and yaks visit the xylophone museum.",
] * 4

TINY_CONFIG = {
    "architectures": ["Gemma3TextModel"],
    "model_type": "gemma3_text",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "sliding_window": 8,
    "max_position_embeddings": 128,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "unk_token_id": 3,
}
DENSE_OUT = 128
EXTRA_VOCAB = 3  # config vocab_size exceeds the SentencePiece vocabulary: padded with [PADi]

LAYER_SHAPES = {
    "input_layernorm.weight": lambda c: (c["hidden_size"],),
    "self_attn.q_proj.weight": lambda c: (c["num_attention_heads"] * c["head_dim"], c["hidden_size"]),
    "self_attn.k_proj.weight": lambda c: (c["num_key_value_heads"] * c["head_dim"], c["hidden_size"]),
    "self_attn.v_proj.weight": lambda c: (c["num_key_value_heads"] * c["head_dim"], c["hidden_size"]),
    "self_attn.o_proj.weight": lambda c: (c["hidden_size"], c["num_attention_heads"] * c["head_dim"]),
    "self_attn.q_norm.weight": lambda c: (c["head_dim"],),
    "self_attn.k_norm.weight": lambda c: (c["head_dim"],),
    "post_attention_layernorm.weight": lambda c: (c["hidden_size"],),
    "pre_feedforward_layernorm.weight": lambda c: (c["hidden_size"],),
    "post_feedforward_layernorm.weight": lambda c: (c["hidden_size"],),
    "mlp.gate_proj.weight": lambda c: (c["intermediate_size"], c["hidden_size"]),
    "mlp.up_proj.weight": lambda c: (c["intermediate_size"], c["hidden_size"]),
    "mlp.down_proj.weight": lambda c: (c["hidden_size"], c["intermediate_size"]),
}


def train_sentencepiece() -> bytes:
    """A small BPE model with Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=90,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        control_symbols=["<mask>"],
        user_defined_symbols=["<u1>"],
        byte_fallback=False,
        add_dummy_prefix=False,
        minloglevel=2,
    )
    return buf.getvalue()


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def build_checkout(root: Path, seed: int = 0, config_overrides: dict | None = None) -> Path:
    """Write the checkout into root (created) and return it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sp_bytes = train_sentencepiece()
    (root / "tokenizer.model").write_bytes(sp_bytes)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    cfg = dict(TINY_CONFIG, vocab_size=sp.get_piece_size() + EXTRA_VOCAB, **(config_overrides or {}))
    _write_json(root / "config.json", cfg)

    tensors = {
        "embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], cfg["hidden_size"]), np.float32),
        "norm.weight": rng.standard_normal(cfg["hidden_size"]).astype(np.float32) * 0.1,
    }
    for il in range(cfg["num_hidden_layers"]):
        for suffix, shape in LAYER_SHAPES.items():
            tensors[f"layers.{il}.{suffix}"] = (rng.standard_normal(shape(cfg)) * 0.1).astype(np.float32)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})

    d = cfg["hidden_size"]
    for sub, (fin, fout) in {"2_Dense": (d, DENSE_OUT), "3_Dense": (DENSE_OUT, d)}.items():
        _write_json(
            root / sub / "config.json",
            {
                "in_features": fin,
                "out_features": fout,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
        save_file(
            {"linear.weight": (rng.standard_normal((fout, fin)) * 0.1).astype(np.float32)},
            str(root / sub / "model.safetensors"),
        )
    _write_json(root / "1_Pooling" / "config.json", {"word_embedding_dimension": d, "pooling_mode_mean_tokens": True})
    _write_json(
        root / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    n_sp = sp.get_piece_size()
    _write_json(root / "added_tokens.json", {"<image_soft_token>": cfg["vocab_size"], "<added_in_range>": n_sp - 1})
    _write_json(
        root / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": True,
            "added_tokens_decoder": {
                "0": {"content": "<pad>", "special": True},
                "1": {"content": "<eos>", "special": True},
                "2": {"content": "<bos>", "special": True},
                "3": {"content": "<unk>", "special": True},
                "7": {"content": "<unused0>", "special": False},
                "8": {"content": "\u2581\u2581two spaces", "special": False},
                str(cfg["vocab_size"] + 5): {"content": "<beyond>", "special": True},
            },
        },
    )
    card = "---\nlicense: gemma\ntags:\n- sentence-transformers\n---\n# tiny\n"
    (root / "README.md").write_text(card, encoding="utf-8")
    _write_json(root / "generation_config.json", {"top_k": 64, "top_p": 0.95})
    return root
