"""Which GGUF metadata keys embedpipe reads, of which type and range, per architecture.

Checked once when a file is opened, so a wrong type or an absurd value (``block_count``
10⁷, ``rope.freq_base`` 0, ``eps`` −inf, ``sliding_window_pattern`` 0) is one clear error
naming the key, never a ZeroDivisionError, a NaN vector or a loop sized by a header value.
An architecture adds its keys as rows of `ARCH_KEYS` (``{arch}`` in a name stands for the
architecture prefix); keys nobody reads are not checked.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedpipe.errors import quote

# llama.cpp's LLAMA_POOLING_TYPE numbers
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass(frozen=True)
class Key:
    """One metadata key: kind, presence and bounds (inclusive; `lo_open` excludes `lo`)."""

    kind: str  # "int", "float", "bool", "str", "ints", "floats", "strs"
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple | None = None

    def problem(self, value: Any) -> str | None:
        check = _KIND_CHECKS[self.kind]
        if not check(value):
            return f"has type {_type_name(value)}, expected {self.kind}"
        if self.kind in ("int", "float"):
            v = float(value)
            if not math.isfinite(v):
                return f"is {value}, not a finite number"
            if self.lo is not None and (v < self.lo or self.lo_open and v == self.lo):
                return f"is {value}, must be {'>' if self.lo_open else '>='} {self.lo:g}"
            if self.hi is not None and v > self.hi:
                return f"is {value}, must be <= {self.hi:g}"
        if self.choices is not None and value not in self.choices:
            return f"is {quote(value)}, supported: {', '.join(map(str, self.choices))}"
        return None


def _type_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of {value.dtype}"
    return type(value).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KIND_CHECKS = {
    "int": _is_int,
    "float": lambda v: isinstance(v, float) or _is_int(v),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.ndim == 1,
    "floats": lambda v: isinstance(v, np.ndarray) and v.dtype.kind in "fiu" and v.ndim == 1,
    "strs": lambda v: isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and not isinstance(v, np.ndarray),
}

_DIM = dict(lo=1, hi=1 << 20)
_ID = dict(lo=0, hi=(1 << 31) - 1)

COMMON_KEYS: dict[str, Key] = {
    "general.architecture": Key("str", required=True),
    "general.alignment": Key("int", lo=1, hi=1 << 20),
    "tokenizer.ggml.model": Key("str"),
    "tokenizer.ggml.tokens": Key("strs"),
    "tokenizer.ggml.scores": Key("floats"),
    "tokenizer.ggml.token_type": Key("ints"),
    "tokenizer.ggml.bos_token_id": Key("int", **_ID),
    "tokenizer.ggml.eos_token_id": Key("int", **_ID),
    "tokenizer.ggml.unknown_token_id": Key("int", **_ID),
    "tokenizer.ggml.padding_token_id": Key("int", **_ID),
    "tokenizer.ggml.add_bos_token": Key("bool"),
    "tokenizer.ggml.add_eos_token": Key("bool"),
}

ARCH_KEYS: dict[str, dict[str, Key]] = {
    "gemma-embedding": {
        "{arch}.block_count": Key("int", required=True, lo=1, hi=1024),
        "{arch}.context_length": Key("int", required=True, **_DIM),
        "{arch}.embedding_length": Key("int", required=True, lo=1, hi=1 << 16),
        "{arch}.feed_forward_length": Key("int", required=True, lo=1, hi=1 << 18),
        "{arch}.attention.head_count": Key("int", required=True, lo=1, hi=1024),
        "{arch}.attention.head_count_kv": Key("int", lo=1, hi=1024),
        "{arch}.attention.key_length": Key("int", required=True, lo=2, hi=1 << 12),
        "{arch}.attention.value_length": Key("int", lo=1, hi=1 << 12),
        "{arch}.attention.sliding_window": Key("int", required=True, **_DIM),
        "{arch}.attention.sliding_window_pattern": Key("int", lo=1, hi=1024),
        "{arch}.attention.layer_norm_rms_epsilon": Key("float", lo=0, hi=1, lo_open=True),
        "{arch}.rope.freq_base": Key("float", lo=1, hi=1e12),
        "{arch}.rope.freq_base_swa": Key("float", lo=1, hi=1e12),
        "{arch}.pooling_type": Key("int", choices=(1,)),
        "{arch}.dense_2_feat_in": Key("int", lo=1, hi=1 << 16),
        "{arch}.dense_2_feat_out": Key("int", lo=1, hi=1 << 16),
        "{arch}.dense_3_feat_in": Key("int", lo=1, hi=1 << 16),
        "{arch}.dense_3_feat_out": Key("int", lo=1, hi=1 << 16),
    },
}


def metadata_problems(metadata: Mapping[str, Any]) -> list[str]:
    """Every schema violation of `metadata` (empty when it is fine), most basic first."""
    problems = []
    table = dict(COMMON_KEYS)
    arch = metadata.get("general.architecture")
    if isinstance(arch, str):
        table.update({name.format(arch=arch): key for name, key in ARCH_KEYS.get(arch, {}).items()})
    for name, key in table.items():
        if name not in metadata:
            if key.required:
                problems.append(f"metadata key {name!r} is missing")
            continue
        problem = key.problem(metadata[name])
        if problem:
            problems.append(f"metadata key {name!r} {problem}")
    return problems


def tokenizer_problem(metadata: Mapping[str, Any], vocab_rows: int | None, check_utf8: bool = True) -> str | None:
    """A SentencePiece/BPE vocabulary stored as GGUF arrays: arrays of one length, equal to the
    token-embedding rows, special ids inside it, every piece valid UTF-8 (`check_utf8`: a 4 MB
    decode for a 262k vocabulary, so callers that never read the pieces may skip it)."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    n = len(tokens)
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        arr = metadata.get(key)
        if arr is not None and len(arr) != n:
            return f"{key} has {len(arr)} entries for {n} tokens"
    if vocab_rows is not None and n != vocab_rows:
        return f"the tokenizer has {n} tokens but token_embd.weight has {vocab_rows} rows"
    for key in ("bos", "eos", "unknown", "padding"):
        tid = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None and tid >= n:
            return f"tokenizer.ggml.{key}_token_id {tid} is outside the {n}-token vocabulary"
    bad = invalid_utf8_piece(tokens) if check_utf8 else None
    if bad is not None:
        return f"token {bad} ({quote(tokens[bad], 40)}) is not valid UTF-8"
    return None


def invalid_utf8_piece(tokens: Sequence[bytes]) -> int | None:
    """Index of the first piece that is not UTF-8, or None.

    A lazily mapped StringArray is checked with one decode of the mapped bytes, length
    prefixes included: while every piece is shorter than 128 bytes its 8-byte prefix is all
    ASCII, which no multi-byte sequence may span, so the region decodes exactly when every
    piece does (262 144 pieces: one 4 MB decode instead of 262 144 small ones). Longer pieces
    get their prefixes blanked in a copy first.
    """
    starts = getattr(tokens, "_starts", None)
    if starts is None or not len(starts):
        for i, piece in enumerate(tokens):
            try:
                (piece if isinstance(piece, bytes) else str(piece).encode()).decode("utf-8")
            except UnicodeError:
                return i
        return None
    first, last = int(starts[0]) - 8, int(tokens._ends[-1])
    region: Any = tokens._buf[first:last]
    if ((tokens._ends - starts) >= 128).any():
        region = np.frombuffer(region, np.uint8).copy()
        region[(starts[:, None] - 8 - first + np.arange(8)[None, :]).reshape(-1)] = 0x20
    try:
        codecs.utf_8_decode(region, "strict", True)
    except UnicodeDecodeError as exc:
        return int(np.searchsorted(starts - first, exc.start, side="right")) - 1
    return None
