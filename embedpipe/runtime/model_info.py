"""A summary of a GGUF embedding model: what `embedpipe model info` prints."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embedpipe.runtime import bert_config
from embedpipe.runtime.gemma_config import GemmaEmbeddingConfig, validate_tensors
from embedpipe.runtime.gguf_file import GGUFModelFile


def _gemma(mf: GGUFModelFile) -> dict[str, Any]:
    cfg = GemmaEmbeddingConfig.from_gguf(mf)
    return {
        "hyperparameters": asdict(cfg),
        "dense_head": validate_tensors(mf, cfg),
        "global_layers": [il for il in range(cfg.n_layers) if cfg.is_global(il)],
    }


def _encoder(mf: GGUFModelFile) -> dict[str, Any]:
    cfg = bert_config.EncoderConfig.from_gguf(mf)
    bert_config.validate_tensors(mf, cfg)
    return {"hyperparameters": asdict(cfg)}


#: general.architecture -> what to read and check for it.
DESCRIBERS = {"gemma-embedding": _gemma, "bert": _encoder, "mpnet": _encoder}


def model_info(path: str | os.PathLike[str], with_sha256: bool = True, name: str | None = None) -> dict[str, Any]:
    """Architecture, hyper-parameters, tensors and tokenizer of a model file (validated first);
    `name` (e.g. the registered model's) replaces the file's general.name."""
    mf = GGUFModelFile(Path(path))
    describe = DESCRIBERS.get(mf.architecture)
    if describe is None:
        from embedpipe.errors import ModelFileError

        raise ModelFileError(f"{mf.path}: architecture {mf.architecture!r} is not supported ({', '.join(DESCRIBERS)})")
    tokens = mf.get("tokenizer.ggml.tokens")
    tokens = tokens if tokens is not None else []
    info: dict[str, Any] = {
        "path": str(mf.path),
        "size_bytes": mf.path.stat().st_size,
        "architecture": mf.architecture,
        "name": name or mf.get("general.name"),
        "description": mf.get("general.description"),
        **describe(mf),
        "tensor_count": len(mf.tensors),
        "quant_mix": dict(sorted(Counter(t.qtype.name for t in mf.tensors.values()).items())),
        "parameters": int(sum(_numel(t.shape) for t in mf.tensors.values())),
        "tokenizer": {
            "model": mf.get("tokenizer.ggml.model"),
            "vocab_size": len(tokens),
            "bos_token_id": mf.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": mf.get("tokenizer.ggml.eos_token_id"),
            "add_bos_token": mf.get("tokenizer.ggml.add_bos_token"),
            "add_eos_token": mf.get("tokenizer.ggml.add_eos_token"),
        },
        "tensors": [{"name": t.name, "type": t.qtype.name, "shape": list(t.shape)} for t in mf.tensors.values()],
    }
    if with_sha256:
        info["sha256"] = mf.sha256()
    return info


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines (the tensor list is summarized, not printed one by one)."""
    hp = info["hyperparameters"]
    tok = info["tokenizer"]
    mix = ", ".join(f"{name}×{count}" for name, count in info["quant_mix"].items())
    head = [
        f"path          {info['path']}",
        f"size          {info['size_bytes'] / 1e6:.1f} MB",
        f"sha256        {info.get('sha256', '-')}",
        f"architecture  {info['architecture']} ({info['name']})",
    ]
    mix_line = f"tensors       {info['tensor_count']} ({mix}), {info['parameters'] / 1e6:.1f} M parameters"
    if "dense_head" not in info:
        note = [f"note          {info['description']}"] if info.get("description") else []
        return "\n".join(
            head
            + note
            + [
                f"dims          hidden {hp['hidden']}, heads {hp['n_head']}, ffn {hp['ffn']}, layers {hp['n_layers']}",
                f"sequence      max {hp['max_seq_length']} tokens (positions {hp['n_positions']}), pooling {hp['pooling']}, eps {hp['eps']:g}",
                mix_line,
                f"tokenizer     {tok['model']} WordPiece, vocab {tok['vocab_size']}",
            ]
        )
    lines = head + [
        f"layers        {hp['n_layers']} (global: {info['global_layers']}, sliding window {hp['sliding_window']})",
        f"dims          hidden {hp['hidden']}, heads {hp['n_head']}/{hp['n_kv_head']} kv, head_dim {hp['head_dim']}, ffn {hp['ffn']}",
        f"context       {hp['context']} tokens, rope θ {hp['rope_local']:g} local / {hp['rope_global']:g} global, eps {hp['eps']:g}",
        f"dense head    {'dense_2/dense_3 ' + str(hp['dense_out']) if info['dense_head'] else 'absent (vectors will differ from sentence-transformers)'}",
        f"tensors       {info['tensor_count']} ({mix}), {info['parameters'] / 1e6:.1f} M parameters",
        f"tokenizer     {tok['model']} SentencePiece, vocab {tok['vocab_size']}, bos {tok['bos_token_id']} eos {tok['eos_token_id']}",
    ]
    return "\n".join(lines)
