"""SentencePiece vocabulary of a Hugging Face checkout -> GGUF tokenizer arrays.

Follows llama.cpp's `_create_vocab_sentencepiece`: pieces, scores and types come from
tokenizer.model through `SentencePieceProcessor` (no protobuf runtime needed);
`added_tokens.json` and `tokenizer_config.json`'s `added_tokens_decoder` then override entries
(CONTROL if special or special-looking, else USER_DEFINED with the SentencePiece space `▁`
written as a plain space); the lists are padded with `[PADi]` UNUSED entries (or trimmed) to
config.json's `vocab_size`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedpipe.errors import ModelFileError
from embedpipe.runtime.tokenizer import TokenType

if TYPE_CHECKING:
    import sentencepiece as spm

#: Added tokens that ought to be CONTROL even when tokenizer_config does not mark them special.
SPECIAL_LOOKING_EXACT: frozenset[str] = frozenset({"<pad>", "<mask>", "<2mass>", "[@BOS@]"})
SPECIAL_LOOKING_WRAPPERS: tuple[tuple[str, str], ...] = (("<|", "|>"), ("<｜", "｜>"), ("<unused", ">"))

ADDED_TOKEN_SCORE = -1000.0
PAD_SCORE_INITIAL = -10000.0
SP_SPACE = "\u2581"


def looks_special(text: str) -> bool:
    return text in SPECIAL_LOOKING_EXACT or any(
        text.startswith(a) and text.endswith(b) for a, b in SPECIAL_LOOKING_WRAPPERS
    )


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]


def load_sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    """Load tokenizer.model (clear error if it is missing or not a SentencePiece model)."""
    import sentencepiece as spm

    if not path.is_file():
        raise ModelFileError(f"{path}: tokenizer.model is missing")
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path}: not a SentencePiece model ({exc})") from exc
    if sp.get_piece_size() == 0:
        raise ModelFileError(f"{path}: SentencePiece model has no pieces")
    return sp


def _piece_type(sp, i: int) -> TokenType:
    """The type llama.cpp derives from SentencePieceProcessor (user-defined pieces read as NORMAL)."""
    for test, ttype in (
        (sp.IsUnknown, TokenType.UNKNOWN),
        (sp.IsControl, TokenType.CONTROL),
        (sp.IsUnused, TokenType.UNUSED),
        (sp.IsByte, TokenType.BYTE),
    ):
        if test(i):
            return ttype
    return TokenType.NORMAL


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot read JSON ({exc})") from exc


def build_vocab(src_dir: Path, vocab_size: int) -> Vocab:
    """The tokens, scores and token types llama.cpp writes for this checkout."""
    sp = load_sentencepiece(src_dir / "tokenizer.model")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [PAD_SCORE_INITIAL] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(vocab_size, sp.get_piece_size())):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = int(_piece_type(sp, i))

    added = src_dir / "added_tokens.json"
    if added.is_file():
        for text, tid in _read_json(added).items():
            if 0 <= int(tid) < vocab_size:
                tokens[tid] = text.encode("utf-8")
                scores[tid], types[tid] = ADDED_TOKEN_SCORE, int(TokenType.USER_DEFINED)

    tok_cfg = src_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        for key, data in _read_json(tok_cfg).get("added_tokens_decoder", {}).items():
            tid, text = int(key), data["content"]
            if tid >= vocab_size:
                continue
            if data.get("special") or looks_special(text):
                types[tid] = int(TokenType.CONTROL)
            else:
                text = text.replace(SP_SPACE, " ")
                types[tid] = int(TokenType.USER_DEFINED)
            scores[tid] = ADDED_TOKEN_SCORE
            tokens[tid] = text.encode("utf-8")
    return Vocab(tokens=tokens, scores=scores, types=types)
