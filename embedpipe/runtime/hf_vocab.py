"""SentencePiece vocabulary of a Hugging Face checkout -> GGUF tokenizer arrays.

Follows llama.cpp's `_create_vocab_sentencepiece`: pieces, scores and types come from
tokenizer.model's `ModelProto`; `added_tokens.json` and `tokenizer_config.json`'s
`added_tokens_decoder` then override entries (CONTROL if special or special-looking, else
USER_DEFINED with the SentencePiece space `▁` written as a plain space); the lists are padded
with `[PADi]` UNUSED entries (or trimmed) to config.json's `vocab_size`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from embedpipe.errors import ModelFileError


class TokenType(IntEnum):
    """GGUF token types (the numbering SentencePiece and llama.cpp share)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


#: SentencePiece ModelProto.SentencePiece.Type -> GGUF type, as llama.cpp reads them through
#: SentencePieceProcessor.Is*() (USER_DEFINED pieces in the proto become NORMAL there).
SP_PIECE_TYPES: dict[int, TokenType] = {
    1: TokenType.NORMAL,
    2: TokenType.UNKNOWN,
    3: TokenType.CONTROL,
    4: TokenType.NORMAL,
    5: TokenType.UNUSED,
    6: TokenType.BYTE,
}

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


def load_sp_proto(path: Path):
    """Parse tokenizer.model as a SentencePiece ModelProto (clear error if it is not one)."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelFileError(f"{path}: tokenizer.model is missing")
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ModelFileError(f"{path}: not a SentencePiece model ({exc})") from exc
    if len(proto.pieces) == 0:
        raise ModelFileError(f"{path}: SentencePiece model has no pieces")
    return proto


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot read JSON ({exc})") from exc


def build_vocab(src_dir: Path, vocab_size: int) -> Vocab:
    """The tokens, scores and token types llama.cpp writes for this checkout."""
    proto = load_sp_proto(src_dir / "tokenizer.model")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [PAD_SCORE_INITIAL] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i, piece in enumerate(proto.pieces[:vocab_size]):
        tokens[i] = piece.piece.encode("utf-8")
        scores[i] = piece.score
        types[i] = int(SP_PIECE_TYPES.get(piece.type, TokenType.NORMAL))

    added = src_dir / "added_tokens.json"
    if added.is_file():
        for text, tid in _read_json(added).items():
            if 0 <= int(tid) < vocab_size:
                tokens[tid], scores[tid], types[tid] = text.encode("utf-8"), ADDED_TOKEN_SCORE, int(TokenType.USER_DEFINED)

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
