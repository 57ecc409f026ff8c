"""Declarative tables mapping BERT-family checkouts (BertModel, MPNet) onto GGUF names.

BERT uses llama.cpp's `bert` architecture names and keys, so llama.cpp loads our files and we
load its files. MPNet has no llama.cpp architecture; its file is `mpnet`, with tensor names in
llama.cpp's conventions plus the shared relative-position-bias table `attn_rel_b`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Per-layer HF suffix (after "encoder.layer.N.") -> GGUF stem (after "blk.N."), per family.
BERT_LAYER: dict[str, str] = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
MPNET_LAYER: dict[str, str] = {
    "attention.attn.q": "attn_q",
    "attention.attn.k": "attn_k",
    "attention.attn.v": "attn_v",
    "attention.attn.o": "attn_output",
    "attention.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
#: Model-level HF stem -> GGUF stem.
BERT_GLOBAL: dict[str, str] = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}
MPNET_GLOBAL: dict[str, str] = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
    "encoder.relative_attention_bias": "attn_rel_b",
}
#: HF tensors that are not part of the sentence encoder (heads, buffers) and are dropped.
IGNORED = re.compile(r"^(?:pooler\.|cls\.|lm_head\.|embeddings\.position_ids$)")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class Family:
    """One HF model family: its config names, tensor tables, GGUF architecture."""

    arch: str
    hf_architectures: frozenset[str]
    hf_prefixes: tuple[str, ...]
    layer: dict[str, str]
    model: dict[str, str]
    has_token_types: bool
    relative_buckets: bool


FAMILIES: tuple[Family, ...] = (
    Family(
        "bert",
        frozenset({"BertModel", "BertForMaskedLM", "BertForPreTraining"}),
        ("bert.", ""),
        BERT_LAYER,
        BERT_GLOBAL,
        has_token_types=True,
        relative_buckets=False,
    ),
    Family(
        "mpnet",
        frozenset({"MPNetModel", "MPNetForMaskedLM"}),
        ("mpnet.", ""),
        MPNET_LAYER,
        MPNET_GLOBAL,
        has_token_types=False,
        relative_buckets=True,
    ),
)
ARCHITECTURES: dict[str, Family] = {f.arch: f for f in FAMILIES}


def family_for(hf_architectures: list[str]) -> Family | None:
    for fam in FAMILIES:
        if fam.hf_architectures.intersection(hf_architectures):
            return fam
    return None


def hf_to_gguf_name(fam: Family, hf_name: str) -> str | None:
    """GGUF name of one HF tensor; '' for tensors to drop; None when unknown."""
    for prefix in fam.hf_prefixes:
        if prefix and hf_name.startswith(prefix):
            hf_name = hf_name[len(prefix) :]
            break
    if IGNORED.match(hf_name):
        return ""
    m = _LAYER_RE.match(hf_name)
    if m:
        stem = fam.layer.get(m.group(2))
        return f"blk.{int(m.group(1))}.{stem}.{m.group(3)}" if stem else None
    m = _GLOBAL_RE.match(hf_name)
    if m and m.group(1) in fam.model:
        return f"{fam.model[m.group(1)]}.{m.group(2)}"
    return None


@dataclass(frozen=True)
class BertHParams:
    n_layer: int
    hidden: int
    ffn: int
    n_head: int
    vocab: int
    n_positions: int
    n_token_types: int
    eps: float
    n_buckets: int  # MPNet relative attention buckets (0 for BERT)
    position_offset: int  # MPNet: pad_token_id + 1; BERT: 0


def expected_shapes(fam: Family, hp: BertHParams) -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy shape (rows = output features) of every tensor the encoder needs."""
    d, f = hp.hidden, hp.ffn
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp.vocab, d),
        "position_embd.weight": (hp.n_positions, d),
        "token_embd_norm.weight": (d,),
        "token_embd_norm.bias": (d,),
    }
    if fam.has_token_types:
        shapes["token_types.weight"] = (hp.n_token_types, d)
    if fam.relative_buckets:
        shapes["attn_rel_b.weight"] = (hp.n_buckets, hp.n_head)
    per_layer = {
        "attn_q": (d, d),
        "attn_k": (d, d),
        "attn_v": (d, d),
        "attn_output": (d, d),
        "ffn_up": (f, d),
        "ffn_down": (d, f),
    }
    for il in range(hp.n_layer):
        for stem, shape in per_layer.items():
            shapes[f"blk.{il}.{stem}.weight"] = shape
            shapes[f"blk.{il}.{stem}.bias"] = (shape[0],)
        for stem in ("attn_output_norm", "layer_output_norm"):
            shapes[f"blk.{il}.{stem}.weight"] = (d,)
            shapes[f"blk.{il}.{stem}.bias"] = (d,)
    return shapes


#: Tensors stored F32 whatever --quant says: 1-D, norms, and the small lookup tables.
F32_TENSORS = re.compile(
    r"(_norm\.(weight|bias)|\.bias|^token_types\.weight|^position_embd\.weight|^attn_rel_b\.weight)$"
)

#: keys embedpipe adds (llama.cpp ignores them): how sentence-transformers uses the model.
KEY_MAX_SEQ = "embedpipe.max_seq_length"
KEY_NORMALIZE = "embedpipe.normalize"
KEY_PROMPTS = "embedpipe.prompts"
KEY_DIMS = "embedpipe.matryoshka_dims"
KEY_POSITION_OFFSET = "embedpipe.position_offset"
KEY_REL_BUCKETS = "embedpipe.relative_attention.buckets"
KEY_REL_MAX_DISTANCE = "embedpipe.relative_attention.max_distance"
#: HF tokenizer pieces llama.cpp does not keep (its WPM tokenizer has fixed behaviour).
KEY_TOK_CLEAN_TEXT = "embedpipe.tokenizer.clean_text"
KEY_TOK_CHINESE = "embedpipe.tokenizer.handle_chinese_chars"
KEY_TOK_STRIP_ACCENTS = "embedpipe.tokenizer.strip_accents"
KEY_TOK_LOWERCASE = "embedpipe.tokenizer.lowercase"
KEY_TOK_MAX_CHARS = "embedpipe.tokenizer.max_input_chars_per_word"
KEY_TOK_ADDED = "embedpipe.tokenizer.added_tokens"  # JSON list of tokenizer.json added_tokens
MPNET_REL_MAX_DISTANCE = 128
