"""BERT-family checkout (BertModel: MiniLM, bge, e5, gte, arctic-embed; MPNet) -> GGUF.

BERT files use llama.cpp's `bert` names and keys, including its "phantom space" vocabulary
(`##x` -> `x`, other pieces -> `▁` + piece), so llama.cpp can load them. What HF `tokenizers`
needs beyond that (normalizer flags, the 100-character word rule, added tokens) and what
sentence-transformers uses (max_seq_length, Normalize) go into `embedpipe.*` keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
from gguf import quants

from embedpipe.runtime import bert_names as bn
from embedpipe.runtime.convert import (
    SOURCE_DTYPES,
    ConvertError,
    _read_json,
    _safetensors_index,
    encode_tensor,
    read_pooling_type,
)
from embedpipe.runtime.gguf_names import QUANTS
from embedpipe.runtime.tokenizer import TokenType

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
MPNET_NOTE = (
    "embedpipe MPNet encoder: architecture 'mpnet' (relative position bias 'attn_rel_b') is read by "
    "embedpipe only; llama.cpp and other GGUF runtimes cannot load this file"
)


def read_hparams(src_dir: Path) -> tuple[bn.Family, bn.BertHParams]:
    path = src_dir / "config.json"
    cfg = _read_json(path)
    fam = bn.family_for(cfg.get("architectures") or [])
    if fam is None:
        raise ConvertError(f"{path}: architectures {cfg.get('architectures')} are not a BERT-family encoder")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConvertError(f"{path}: position_embedding_type {cfg['position_embedding_type']!r} is not supported")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConvertError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (exact erf GELU only)")

    def num(key: str, default=None, kind=int):
        value = cfg.get(key, default)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConvertError(f"{path}: key {key!r} must be a non-negative number, got {value!r}")
        return kind(value)

    hp = bn.BertHParams(
        n_layer=num("num_hidden_layers"),
        hidden=num("hidden_size"),
        ffn=num("intermediate_size"),
        n_head=num("num_attention_heads"),
        vocab=num("vocab_size"),
        n_positions=num("max_position_embeddings"),
        n_token_types=num("type_vocab_size", 2) if fam.has_token_types else 0,
        eps=num("layer_norm_eps", 1e-12, float),
        n_buckets=num("relative_attention_num_buckets", 32) if fam.relative_buckets else 0,
        position_offset=num("pad_token_id", 1) + 1 if fam.relative_buckets else 0,
    )
    if hp.hidden == 0 or hp.n_head == 0 or hp.hidden % hp.n_head:
        raise ConvertError(f"{path}: hidden_size {hp.hidden} is not a multiple of num_attention_heads {hp.n_head}")
    return fam, hp


def plan_tensors(src_dir: Path, fam: bn.Family, hp: bn.BertHParams) -> list[tuple[str, str, tuple[int, ...]]]:
    """(gguf name, hf name, shape) of every tensor, checked against the config."""
    body = src_dir / MODEL_FILE
    index = _safetensors_index(body)
    expected = bn.expected_shapes(fam, hp)
    plan: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for hf_name, (dtype, shape) in index.items():
        gname = bn.hf_to_gguf_name(fam, hf_name)
        if gname == "":
            continue
        if gname is None or gname not in expected:
            raise ConvertError(f"{body}: unexpected tensor {hf_name!r}")
        if dtype not in SOURCE_DTYPES:
            raise ConvertError(f"{body}: tensor {hf_name!r} has dtype {dtype}; supported: {sorted(SOURCE_DTYPES)}")
        if tuple(shape) != expected[gname]:
            raise ConvertError(f"{body}: tensor {hf_name!r} has shape {list(shape)}, expected {list(expected[gname])}")
        plan[gname] = (gname, hf_name, tuple(shape))
    missing = [k for k in expected if k not in plan]
    if missing:
        raise ConvertError(f"{body}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [plan[k] for k in expected]


def tensor_type(gname: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if len(shape) == 1 or bn.F32_TENSORS.search(gname):
        return gguf.GGMLQuantizationType.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        log.warning("%s: row length %d is not a whole number of %s blocks, storing F16", gname, shape[-1], qtype.name)
        return gguf.GGMLQuantizationType.F16
    return qtype


def phantom_space(piece: str) -> str:
    """llama.cpp's rewrite of a WordPiece vocabulary entry (undone by the tokenizer on load)."""
    if piece.startswith("[") and piece.endswith("]"):
        return piece
    if piece.startswith("##"):
        return piece[2:]
    return "\u2581" + piece


def read_tokenizer(src_dir: Path, vocab_size: int) -> dict:
    """Vocabulary, types and HF pipeline flags from the checkout's tokenizer.json."""
    path = src_dir / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ConvertError(f"{path}: model type {model.get('type')!r} is not WordPiece")
    if model.get("continuing_subword_prefix", "##") != "##":
        raise ConvertError(f"{path}: continuing_subword_prefix must be '##'")
    norm = tj.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        raise ConvertError(f"{path}: normalizer {norm.get('type')!r} is not BertNormalizer")
    pre = (tj.get("pre_tokenizer") or {}).get("type")
    if pre != "BertPreTokenizer":
        raise ConvertError(f"{path}: pre_tokenizer {pre!r} is not BertPreTokenizer")
    tokens = [""] * len(model["vocab"])
    for piece, idx in model["vocab"].items():
        if not 0 <= idx < len(tokens) or tokens[idx]:
            raise ConvertError(f"{path}: vocabulary ids are not 0..{len(tokens) - 1} without gaps")
        tokens[idx] = piece
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict)]
    for a in added:  # added tokens may extend the vocabulary (MPNet's <mask>)
        idx = int(a["id"])
        if idx >= len(tokens):
            tokens.extend([""] * (idx + 1 - len(tokens)))
        tokens[idx] = a["content"]
    if len(tokens) > vocab_size or any(t == "" for t in tokens):
        raise ConvertError(f"{path}: {len(tokens)} tokens with gaps or more than vocab_size {vocab_size}")
    while len(tokens) < vocab_size:  # embedding rows without a token (never produced)
        tokens.append(f"[PAD{len(tokens)}]")
    types = np.full(len(tokens), TokenType.NORMAL, np.int32)
    for a in added:
        types[int(a["id"])] = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
    cls_sep = _cls_sep(tj.get("post_processor") or {}, model["vocab"], path)
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return {
        "tokens": tokens,
        "types": types,
        "cls": cls_sep[0],
        "sep": cls_sep[1],
        "unk": model["vocab"].get(model.get("unk_token", "[UNK]")),
        "pad": (tj.get("padding") or {}).get("pad_id"),
        "clean_text": bool(norm.get("clean_text", True)),
        "chinese": bool(norm.get("handle_chinese_chars", True)),
        "strip_accents": lowercase if strip is None else bool(strip),
        "lowercase": lowercase,
        "max_chars": int(model.get("max_input_chars_per_word", 100)),
        "added": json.dumps(added),
    }


def _cls_sep(post: dict, vocab: dict, path: Path) -> tuple[int, int]:
    """Ids wrapped around a single sequence: TemplateProcessing `[CLS] $A [SEP]`, or Roberta/Bert processing."""
    kind = post.get("type")
    if kind in ("RobertaProcessing", "BertProcessing"):
        return int(post["cls"][1]), int(post["sep"][1])
    if kind == "TemplateProcessing":
        single = post.get("single") or []
        specials = post.get("special_tokens") or {}
        ids = [specials[s["SpecialToken"]["id"]]["ids"][0] for s in single if "SpecialToken" in s]
        if len(single) == 3 and "Sequence" in single[1] and len(ids) == 2:
            return int(ids[0]), int(ids[1])
    raise ConvertError(f"{path}: post_processor {kind!r} is not '<cls> text <sep>'")


def read_max_seq_length(src_dir: Path, hp: bn.BertHParams) -> int:
    conf = src_dir / "sentence_bert_config.json"
    limit = hp.n_positions - hp.position_offset
    if not conf.is_file():
        return limit
    value = _read_json(conf).get("max_seq_length", limit)
    if not isinstance(value, int) or not 0 < value <= limit:
        raise ConvertError(f"{conf}: max_seq_length {value!r} is not in 1..{limit}")
    return value


def has_normalize(src_dir: Path) -> bool:
    path = src_dir / "modules.json"
    return path.is_file() and any(str(m.get("type", "")).endswith("Normalize") for m in _read_json(path))


def _write_kv(
    w: gguf.GGUFWriter,
    src_dir: Path,
    fam: bn.Family,
    hp: bn.BertHParams,
    tok: dict,
    file_type: gguf.LlamaFileType,
    metadata: Mapping,
) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    total = w.get_total_parameter_count()[0]
    meta = gguf.Metadata.load(None, src_dir, None, total)
    meta.name = meta.name or src_dir.name
    meta.set_gguf_meta_model(w)
    if fam.arch == "mpnet":
        w.add_description(MPNET_NOTE)
    w.add_block_count(hp.n_layer)
    w.add_context_length(hp.n_positions)
    w.add_embedding_length(hp.hidden)
    w.add_feed_forward_length(hp.ffn)
    w.add_head_count(hp.n_head)
    w.add_layer_norm_eps(hp.eps)
    w.add_causal_attention(False)
    pooling = read_pooling_type(src_dir) or gguf.PoolingType.MEAN
    w.add_pooling_type(pooling)
    if fam.relative_buckets:
        w.add_uint32(bn.KEY_REL_BUCKETS, hp.n_buckets)
        w.add_uint32(bn.KEY_REL_MAX_DISTANCE, bn.MPNET_REL_MAX_DISTANCE)
        w.add_uint32(bn.KEY_POSITION_OFFSET, hp.position_offset)
    w.add_uint32(bn.KEY_MAX_SEQ, read_max_seq_length(src_dir, hp))
    w.add_bool(bn.KEY_NORMALIZE, has_normalize(src_dir))
    w.add_string(bn.KEY_PROMPTS, str(metadata.get("prompts", "none")))
    dims = [int(d) for d in metadata.get("matryoshka_dims", [hp.hidden]) if 0 < int(d) <= hp.hidden]
    w.add_array(bn.KEY_DIMS, dims or [hp.hidden])
    if fam.has_token_types:
        w.add_token_type_count(hp.n_token_types)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom_space(t) for t in tok["tokens"]])
    w.add_token_types([int(t) for t in tok["types"]])
    w.add_bos_token_id(tok["cls"])  # llama.cpp's BERT: BOS is [CLS], SEP is appended
    w.add_sep_token_id(tok["sep"])
    w.add_eos_token_id(tok["sep"])
    if tok["unk"] is not None:
        w.add_unk_token_id(int(tok["unk"]))
    if tok["pad"] is not None:
        w.add_pad_token_id(int(tok["pad"]))
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    w.add_add_eos_token(False)
    w.add_bool(bn.KEY_TOK_CLEAN_TEXT, tok["clean_text"])
    w.add_bool(bn.KEY_TOK_CHINESE, tok["chinese"])
    w.add_bool(bn.KEY_TOK_STRIP_ACCENTS, tok["strip_accents"])
    w.add_bool(bn.KEY_TOK_LOWERCASE, tok["lowercase"])
    w.add_uint32(bn.KEY_TOK_MAX_CHARS, tok["max_chars"])
    w.add_string(bn.KEY_TOK_ADDED, tok["added"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(file_type)


def convert_bert_checkout(
    src_dir: Path, out_path: Path, quant: str = "q8_0", progress: bool = False, metadata: Mapping | None = None
) -> Path:
    """Write a BERT-family sentence-transformers checkout as GGUF (atomically)."""
    from safetensors import safe_open
    from tqdm import tqdm

    qtype, file_type = QUANTS[quant]
    fam, hp = read_hparams(src_dir)
    plan = plan_tensors(src_dir, fam, hp)
    tok = read_tokenizer(src_dir, hp.vocab)
    types = [tensor_type(g, s, qtype) for g, _, s in plan]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(path=None, arch=fam.arch)
    try:
        for (gname, _, shape), ttype in zip(plan, types):
            byte_shape = quants.quant_shape_to_byte_shape(shape, ttype)
            w.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ttype)
        _write_kv(w, src_dir, fam, hp, tok, file_type, metadata or {})
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        with (
            safe_open(str(src_dir / MODEL_FILE), framework="numpy") as f,
            tqdm(total=len(plan), unit="tensor", desc="convert", disable=not progress) as bar,
        ):
            for (_, hf_name, _), ttype in zip(plan, types):
                data = np.asarray(f.get_tensor(hf_name), dtype=np.float32)
                if not np.isfinite(data).all():
                    raise ConvertError(f"{src_dir / MODEL_FILE}: tensor {hf_name!r} contains NaN or Inf")
                w.write_tensor_data(encode_tensor(data, ttype))
                bar.update(1)
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path
