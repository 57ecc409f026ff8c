"""Tiny random sentence-transformers BERT and MPNet checkouts, and an independent float64
reference forward pass over their safetensors (HF names, no embedpipe code)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

WORDS = [
    "hello",
    "world",
    "the",
    "quick",
    "brown",
    "fox",
    "cafe",
    "naive",
    "東",
    "京",
    "un",
    "##believ",
    "##able",
    "##ing",
    "jump",
    ",",
    "!",
    ".",
    "?",
    "-",
    "'",
    "(",
    ")",
    "[",
    "]",
    "<",
    ">",
]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]"]

HIDDEN, HEADS, FFN, LAYERS = 64, 4, 96, 2


def _vocab(specials: list[str]) -> list[str]:
    return specials + LETTERS + ["##" + c for c in LETTERS] + WORDS


def _added(entries: list[tuple[int, str, bool]]) -> list[dict]:
    return [
        {
            "id": i,
            "content": c,
            "single_word": False,
            "lstrip": lstrip,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, c, lstrip in entries
    ]


def _tokenizer_json(vocab: list[str], unk: str, post: dict, added: list[dict], max_chars: int) -> dict:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": post,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": unk,
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": max_chars,
            "vocab": {p: i for i, p in enumerate(vocab)},
        },
    }


def _st_files(root: Path, hidden: int, max_seq: int, pooling: str) -> None:
    (root / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
            }
        )
    )
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq, "do_lower_case": False}))


def _weights(rng: np.random.Generator, names: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in names.items():
        if "LayerNorm.weight" in name:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.15 * rng.standard_normal(shape)).astype(np.float32)
    return out


def build_bert_checkout(
    root: Path, pooling: str = "mean", seed: int = 0, n_positions: int = 64, max_seq: int = 48
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(BERT_SPECIALS)
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "vocab_size": len(vocab) + 2,
        "max_position_embeddings": n_positions,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
    }
    (root / "config.json").write_text(json.dumps(cfg))
    post = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
        ],
        "special_tokens": {
            "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
            "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
        },
    }
    added = _added([(i, s, False) for i, s in enumerate(BERT_SPECIALS)])
    (root / "tokenizer.json").write_text(json.dumps(_tokenizer_json(vocab, "[UNK]", post, added, 12)))
    _st_files(root, HIDDEN, max_seq, pooling)
    names = {
        "embeddings.word_embeddings.weight": (cfg["vocab_size"], HIDDEN),
        "embeddings.position_embeddings.weight": (n_positions, HIDDEN),
        "embeddings.token_type_embeddings.weight": (2, HIDDEN),
        "embeddings.LayerNorm.weight": (HIDDEN,),
        "embeddings.LayerNorm.bias": (HIDDEN,),
        "pooler.dense.weight": (HIDDEN, HIDDEN),
        "pooler.dense.bias": (HIDDEN,),
    }
    for il in range(LAYERS):
        p = f"encoder.layer.{il}."
        for stem, shape in (
            ("attention.self.query", (HIDDEN, HIDDEN)),
            ("attention.self.key", (HIDDEN, HIDDEN)),
            ("attention.self.value", (HIDDEN, HIDDEN)),
            ("attention.output.dense", (HIDDEN, HIDDEN)),
            ("intermediate.dense", (FFN, HIDDEN)),
            ("output.dense", (HIDDEN, FFN)),
        ):
            names[p + stem + ".weight"], names[p + stem + ".bias"] = shape, (shape[0],)
        for stem in ("attention.output.LayerNorm", "output.LayerNorm"):
            names[p + stem + ".weight"], names[p + stem + ".bias"] = (HIDDEN,), (HIDDEN,)
    save_file(_weights(np.random.default_rng(seed), names), str(root / "model.safetensors"))
    return root


def build_mpnet_checkout(root: Path, seed: int = 1, n_positions: int = 66, max_seq: int = 48) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(MPNET_SPECIALS) + ["<mask>"]
    cfg = {
        "architectures": ["MPNetForMaskedLM"],
        "model_type": "mpnet",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "vocab_size": len(vocab),
        "max_position_embeddings": n_positions,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "relative_attention_num_buckets": 32,
        "pad_token_id": 1,
    }
    (root / "config.json").write_text(json.dumps(cfg))
    post = {
        "type": "RobertaProcessing",
        "sep": ["</s>", 2],
        "cls": ["<s>", 0],
        "trim_offsets": True,
        "add_prefix_space": False,
    }
    added = _added(
        [
            (0, "<s>", False),
            (1, "<pad>", False),
            (2, "</s>", False),
            (3, "<unk>", False),
            (4, "[UNK]", False),
            (len(vocab) - 1, "<mask>", True),
        ]
    )
    (root / "tokenizer.json").write_text(json.dumps(_tokenizer_json(vocab, "[UNK]", post, added, 100)))
    _st_files(root, HIDDEN, max_seq, "mean")
    names = {
        "embeddings.word_embeddings.weight": (len(vocab), HIDDEN),
        "embeddings.position_embeddings.weight": (n_positions, HIDDEN),
        "embeddings.LayerNorm.weight": (HIDDEN,),
        "embeddings.LayerNorm.bias": (HIDDEN,),
        "encoder.relative_attention_bias.weight": (32, HEADS),
    }
    for il in range(LAYERS):
        p = f"encoder.layer.{il}."
        for stem, shape in (
            ("attention.attn.q", (HIDDEN, HIDDEN)),
            ("attention.attn.k", (HIDDEN, HIDDEN)),
            ("attention.attn.v", (HIDDEN, HIDDEN)),
            ("attention.attn.o", (HIDDEN, HIDDEN)),
            ("intermediate.dense", (FFN, HIDDEN)),
            ("output.dense", (HIDDEN, FFN)),
        ):
            names[p + stem + ".weight"], names[p + stem + ".bias"] = shape, (shape[0],)
        for stem in ("attention.LayerNorm", "output.LayerNorm"):
            names[p + stem + ".weight"], names[p + stem + ".bias"] = (HIDDEN,), (HIDDEN,)
    weights = _weights(np.random.default_rng(seed), names)
    weights["encoder.relative_attention_bias.weight"] *= 20  # make the bias matter
    save_file(weights, str(root / "model.safetensors"))
    return root


# ----------------------------------------------------------------------------- float64 reference


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def _bucket(rel: np.ndarray, n_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's bucketing, written from the paper's description in float64."""
    n = -rel
    half = n_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (half - exact)).astype(
            np.int64
        )
    return ret + np.where(n < exact, n, np.minimum(large, half - 1))


def reference_embedding(root: Path, ids: list[int]) -> np.ndarray:
    """Sentence vector (pooled, L2-normalized) of one token sequence, in float64."""
    cfg = json.loads((root / "config.json").read_text())
    pool = json.loads((root / "1_Pooling" / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(root / "model.safetensors")).items()}
    mpnet = cfg["model_type"] == "mpnet"
    eps, h = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    t = len(ids)
    pos = np.arange(t) + (cfg["pad_token_id"] + 1 if mpnet else 0)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][pos]
    if not mpnet:
        x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    bias = 0.0
    if mpnet:
        rel = np.arange(t)[None, :] - np.arange(t)[:, None]
        bias = w["encoder.relative_attention_bias.weight"][_bucket(rel)].transpose(2, 0, 1)
    names = (
        ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm")
        if mpnet
        else (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
        )
    )
    lin = lambda p, v: v @ w[p + ".weight"].T + w[p + ".bias"]
    for il in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{il}."
        q, k, v = (lin(p + n, x).reshape(t, h, -1).transpose(1, 0, 2) for n in names[:3])
        s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1]) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(t, -1)
        x = _ln(x + lin(p + names[3], a), w[p + names[4] + ".weight"], w[p + names[4] + ".bias"], eps)
        u = lin(p + "intermediate.dense", x)
        u = 0.5 * u * (1 + _erf(u / math.sqrt(2)))
        x = _ln(x + lin(p + "output.dense", u), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    vec = x[0] if pool.get("pooling_mode_cls_token") else x.mean(0)
    return vec / np.linalg.norm(vec)
