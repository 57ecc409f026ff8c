"""SentencePiece tokenizer rebuilt from GGUF metadata alone.

A GGUF with `tokenizer.ggml.model = "llama"` stores SentencePiece pieces, scores and piece
types (with SentencePiece's own type numbers). We serialize a `ModelProto` from them with a
few lines of protobuf wire format, so no protobuf runtime is needed, and load it into
`sentencepiece.SentencePieceProcessor`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

from embedpipe.errors import ModelFileError
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.gguf_schema import invalid_utf8_piece

if TYPE_CHECKING:
    from embedpipe.runtime.wordpiece import WordPieceTokenizer

# SentencePiece TrainerSpec.ModelType
_BPE = 2


#: Below this many characters in all, a batch is encoded text by text (see ``Tokenizer.encode_batch``).
THREADED_ENCODE_MIN_CHARS = 4096


class TokenType(IntEnum):
    """SentencePiece piece types; GGUF's token_type (and llama.cpp) use the same numbers."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Encoding-relevant TrainerSpec fields of a byte-fallback BPE model (Gemma's): field number,
# wire kind, value. Written after vocab size and special ids.
_TRAINER_FLAGS: tuple[tuple[int, bool], ...] = (
    (21, True),  # split_by_unicode_script
    (22, False),  # split_by_whitespace
    (23, True),  # split_by_number
    (25, True),  # split_digits
    (26, True),  # allow_whitespace_only_pieces
    (35, True),  # byte_fallback
)


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = tuple(bytes([i]) for i in range(0x80))


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    unk: int
    pad: int
    add_bos: bool
    add_eos: bool


def build_model_proto(pieces: Sequence[bytes], scores: np.ndarray, types: np.ndarray, special: SpecialIds) -> bytes:
    """Serialized sentencepiece ModelProto for a byte-fallback BPE vocabulary."""
    pack_score = struct.Struct("<f").pack
    out = bytearray()
    for piece, score, kind in zip(pieces, scores.tolist(), types.tolist()):
        # SentencePiece { piece = 1; score = 2; type = 3 }, inlined: this runs 262 144 times.
        body = b"\x0a" + _varint(len(piece)) + piece + b"\x15" + pack_score(score) + b"\x18" + _varint(kind)
        out += b"\x0a" + _varint(len(body)) + body
    trainer = _int_field(3, _BPE) + _int_field(4, len(pieces))
    trainer += b"".join(_int_field(num, int(flag)) for num, flag in _TRAINER_FLAGS)
    trainer += _int_field(40, special.unk) + _int_field(41, special.bos)
    trainer += _int_field(42, special.eos) + _int_field(43, special.pad)
    for num, ident in ((45, special.unk), (46, special.bos), (47, special.eos), (48, special.pad)):
        if 0 <= ident < len(pieces):
            trainer += _bytes_field(num, pieces[ident])
    out += _bytes_field(2, trainer)
    normalizer = _bytes_field(1, b"identity") + _int_field(3, 0) + _int_field(4, 0) + _int_field(5, 1)
    out += _bytes_field(3, normalizer)
    return bytes(out)


def sentencepiece_view(
    pieces: Sequence[bytes], types: np.ndarray, special: SpecialIds
) -> tuple[list[bytes], np.ndarray]:
    """Undo what llama.cpp's converter does to SentencePiece vocabularies, so that
    SentencePiece reproduces the source tokenizer (and Hugging Face's) id for id.

    The converter writes user-defined pieces with spaces instead of "▁" (llama.cpp matches them
    on raw text) and marks most of them, e.g. `<start_of_turn>`, as control. Control pieces are
    never matched in text by SentencePiece, but Hugging Face and llama.cpp (parse_special) do
    match them; so every control piece but UNK becomes user-defined again.
    """
    types = types.copy()
    types[(types == TokenType.CONTROL)] = TokenType.USER_DEFINED
    if 0 <= special.unk < len(types):
        types[special.unk] = TokenType.UNKNOWN
    user = set(np.flatnonzero(types == TokenType.USER_DEFINED).tolist())
    space, meta = b" ", "\u2581".encode()
    fixed = [p.replace(space, meta) if i in user else p for i, p in enumerate(pieces)]
    return fixed, types


# Bump when build_model_proto or sentencepiece_view change what they produce.
PROTO_VERSION = "2"
# The cache directory keeps at most this many bytes of models (least recently used go first).
CACHE_MAX_BYTES = 256 << 20
CACHE_SUFFIX = ".model"


def tokenizer_cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """``tokenizers/`` in the cache root (``root``: a ``--cache-dir``)."""
    from embedpipe.runtime.cache_root import tokenizers_dir

    return tokenizers_dir(root)


def _serialized(pieces: Sequence[bytes]) -> bytes | memoryview:
    as_stored = getattr(pieces, "serialized", None)
    if as_stored is not None:
        return as_stored()
    return b"".join(struct.pack("<Q", len(p)) + bytes(p) for p in pieces)


def _proto_cache_path(pieces: Sequence[bytes], scores: np.ndarray, types: np.ndarray, special: SpecialIds) -> Path:
    """Where the serialized ModelProto of this vocabulary is cached: building it walks 262 144
    pieces in Python (~0.7 s); reading it back takes milliseconds. Keyed by what the proto is
    made of (pieces, scores, types, special ids), not by the model file: every file with the
    same vocabulary (a test's temporary copies, F32 and Q8_0 of one model) shares one entry,
    and a changed vocabulary can never meet a stale one."""
    digest = hashlib.sha256(f"{PROTO_VERSION}:{special}:{len(pieces)}:".encode())
    digest.update(_serialized(pieces))
    digest.update(np.ascontiguousarray(scores, np.float32).tobytes())
    digest.update(np.ascontiguousarray(types, np.int32).tobytes())
    return tokenizer_cache_dir() / f"{digest.hexdigest()[:32]}{CACHE_SUFFIX}"


def _read_cached(path: Path | None) -> bytes | None:
    try:
        data = path.read_bytes() if path is not None else None
    except OSError:
        return None
    try:
        os.utime(path)  # recency for the size bound
    except OSError:
        pass
    return data


def _write_cached(path: Path | None, proto: bytes) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(proto)
        os.replace(tmp, path)
        prune_cache(path.parent, CACHE_MAX_BYTES, keep=path)
    except OSError:  # a read-only cache only costs the rebuild next time
        pass


def cache_files(directory: Path | None = None) -> list[Path]:
    """Every cached tokenizer model (`embedpipe cache info`)."""
    directory = tokenizer_cache_dir() if directory is None else Path(directory)
    return sorted(directory.glob(f"*{CACHE_SUFFIX}")) if directory.is_dir() else []


def prune_cache(directory: Path, limit: int, keep: Path | None = None) -> None:
    """Delete least recently used models until ``directory`` holds at most ``limit`` bytes,
    and temporary files older than an hour."""
    import time

    now = time.time()
    entries = []
    for path in directory.iterdir():
        try:
            st = path.stat()
        except OSError:
            continue
        if path.name.endswith(".tmp"):
            if now - st.st_mtime > 3600:
                path.unlink(missing_ok=True)
        elif path.name.endswith(CACHE_SUFFIX):
            entries.append((st.st_mtime, st.st_size, path))
    total = 0
    for _mtime, size, path in sorted(entries, reverse=True):
        total += size
        if total > limit and path != keep:
            path.unlink(missing_ok=True)
            total -= size


def _load_proto(proto: bytes | None) -> spm.SentencePieceProcessor | None:
    if not proto:
        return None
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError):
        return None
    return processor


class Tokenizer:
    """Text <-> token ids, adding BOS/EOS as the GGUF flags say."""

    def __init__(self, processor: spm.SentencePieceProcessor, special: SpecialIds):
        self._sp = processor
        self.special = special
        self.vocab_size = processor.get_piece_size()

    @classmethod
    def from_gguf(cls, model_file: GGUFModelFile) -> Tokenizer:
        kind = model_file.get("tokenizer.ggml.model")
        if kind != "llama":
            raise ModelFileError(
                f"{model_file.path}: tokenizer model {kind!r} is not supported (expected 'llama' SentencePiece)"
            )
        pieces = model_file.require("tokenizer.ggml.tokens")
        scores = np.asarray(model_file.require("tokenizer.ggml.scores"), dtype=np.float32)
        types = np.asarray(model_file.require("tokenizer.ggml.token_type"), dtype=np.int32)
        if not (len(pieces) == len(scores) == len(types)):
            raise ModelFileError(f"{model_file.path}: tokenizer arrays differ in length")
        special = SpecialIds(
            bos=int(model_file.get("tokenizer.ggml.bos_token_id", 2)),
            eos=int(model_file.get("tokenizer.ggml.eos_token_id", 1)),
            unk=int(model_file.get("tokenizer.ggml.unknown_token_id", 3)),
            pad=int(model_file.get("tokenizer.ggml.padding_token_id", 0)),
            add_bos=bool(model_file.get("tokenizer.ggml.add_bos_token", True)),
            add_eos=bool(model_file.get("tokenizer.ggml.add_eos_token", False)),
        )
        cache = _proto_cache_path(pieces, scores, types, special)
        processor = _load_proto(_read_cached(cache))
        if processor is None:  # not cached yet, or a damaged cache entry
            bad = invalid_utf8_piece(pieces)
            if bad is not None:
                raise ModelFileError(
                    f"{model_file.path}: tokenizer piece {bad} is not valid UTF-8; re-download or re-convert the model"
                )
            pieces, types = sentencepiece_view(pieces, types, special)
            proto = build_model_proto(pieces, scores, types, special)
            processor = spm.SentencePieceProcessor()
            try:
                processor.LoadFromSerializedProto(proto)
            except (RuntimeError, OSError) as exc:
                raise ModelFileError(
                    f"{model_file.path}: tokenizer metadata does not form a valid model ({exc})"
                ) from exc
            _write_cached(cache, proto)
        return cls(processor, special)

    def _wrap(self, ids: list[int], add_special: bool) -> list[int]:
        if not add_special:
            return ids
        head = [self.special.bos] if self.special.add_bos else []
        tail = [self.special.eos] if self.special.add_eos else []
        return head + ids + tail

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return self._wrap(self._sp.encode(text), add_special)

    def encode_batch(self, texts: Sequence[str], add_special: bool = True) -> list[list[int]]:
        # SentencePiece encodes a list on a pool of threads it starts per call: texts of a
        # few thousand characters in all are faster one by one on this thread.
        if sum(map(len, texts)) < THREADED_ENCODE_MIN_CHARS:
            return [self._wrap(self._sp.encode(text), add_special) for text in texts]
        return [self._wrap(ids, add_special) for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        specials = {self.special.bos, self.special.eos, self.special.pad}
        return self._sp.decode([int(i) for i in ids if int(i) not in specials])

    @property
    def n_special(self) -> int:
        return int(self.special.add_bos) + int(self.special.add_eos)


def load_tokenizer(model_file: GGUFModelFile) -> Tokenizer | WordPieceTokenizer:
    """The tokenizer of `tokenizer.ggml.model`: SentencePiece ("llama") or WordPiece ("bert")."""
    kind = model_file.get("tokenizer.ggml.model")
    if kind == "bert":
        from embedpipe.runtime.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer.from_gguf(model_file)
    return Tokenizer.from_gguf(model_file)
