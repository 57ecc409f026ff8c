"""WordPiece tokenizer (BERT, MPNet) rebuilt from GGUF metadata alone with HF `tokenizers`.

The pipeline is Hugging Face's own: BertNormalizer (flags from `embedpipe.tokenizer.*`, or
BERT-uncased defaults for files written by llama.cpp), BertPreTokenizer, WordPiece with its
long-word rule, `<cls> $A <sep>` around the text, and the checkout's added tokens, so typed
special-token strings behave as the checkout's tokenizer.json makes them behave.
llama.cpp's "phantom space" vocabulary (`▁word`, bare continuation pieces) is undone on load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenizers import Tokenizer as HFTokenizer

from embedpipe.errors import ModelFileError
from embedpipe.runtime import bert_names as bn
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.tokenizer import SpecialIds, TokenType

PHANTOM = "\u2581"


def undo_phantom_space(pieces: Sequence[str], types: Sequence[int]) -> list[str]:
    """WordPiece pieces from llama.cpp's rewrite: `▁x` -> `x`, `[X]` and control tokens as they
    are, any other piece was a continuation `##x`."""
    out = []
    for piece, kind in zip(pieces, types):
        if piece.startswith(PHANTOM):
            out.append(piece[1:])
        elif (piece.startswith("[") and piece.endswith("]") and len(piece) > 1) or kind == TokenType.CONTROL:
            out.append(piece)
        else:
            out.append("##" + piece)
    return out


def _added_tokens(mf: GGUFModelFile, pieces: list[str], types: list[int]) -> list[dict]:
    raw = mf.get(bn.KEY_TOK_ADDED)
    if raw is not None:
        try:
            added = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{mf.path}: {bn.KEY_TOK_ADDED} is not JSON ({exc})") from exc
        if not isinstance(added, list) or not all(
            isinstance(a, dict) and 0 <= int(a.get("id", -1)) < len(pieces) for a in added
        ):
            raise ModelFileError(f"{mf.path}: {bn.KEY_TOK_ADDED} holds token ids outside the vocabulary")
        return added
    return [
        {
            "id": i,
            "content": pieces[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(types)
        if t == TokenType.CONTROL
    ]


def tokenizer_json(mf: GGUFModelFile) -> tuple[str, SpecialIds]:
    """A tokenizer.json document equivalent to the checkout's, from the GGUF keys."""
    raw = mf.require("tokenizer.ggml.tokens")
    stored = mf.get("tokenizer.ggml.token_type")
    types = [int(t) for t in stored] if stored is not None else [int(TokenType.NORMAL)] * len(raw)
    if len(types) != len(raw):
        raise ModelFileError(f"{mf.path}: tokenizer arrays differ in length")
    try:
        text = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in raw]
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{mf.path}: a vocabulary piece is not UTF-8 ({exc})") from exc
    pieces = undo_phantom_space(text, types)
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        vocab.setdefault(piece, i)  # first id wins, as in a vocab.txt with a repeated line
    cls = int(mf.get("tokenizer.ggml.bos_token_id", vocab.get("[CLS]", 101)))
    sep = int(
        mf.get("tokenizer.ggml.seperator_token_id", mf.get("tokenizer.ggml.eos_token_id", vocab.get("[SEP]", 102)))
    )
    unk = int(mf.get("tokenizer.ggml.unknown_token_id", vocab.get("[UNK]", 100)))
    pad = int(mf.get("tokenizer.ggml.padding_token_id", 0))
    for name, ident in (("cls/bos", cls), ("sep", sep), ("unk", unk)):
        if not 0 <= ident < len(pieces):
            raise ModelFileError(f"{mf.path}: {name} token id {ident} is outside the vocabulary of {len(pieces)}")
    lowercase = bool(mf.get(bn.KEY_TOK_LOWERCASE, True))
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(mf, pieces, types),
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": bool(mf.get(bn.KEY_TOK_CLEAN_TEXT, True)),
            "handle_chinese_chars": bool(mf.get(bn.KEY_TOK_CHINESE, True)),
            "strip_accents": bool(mf.get(bn.KEY_TOK_STRIP_ACCENTS, lowercase)),
            "lowercase": lowercase,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": pieces[cls], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": pieces[sep], "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": pieces[cls], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": pieces[sep], "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": pieces[sep], "type_id": 1}},
            ],
            "special_tokens": {pieces[i]: {"id": pieces[i], "ids": [i], "tokens": [pieces[i]]} for i in {cls, sep}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": pieces[unk],
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": int(mf.get(bn.KEY_TOK_MAX_CHARS, 100)),
            "vocab": vocab,
        },
    }
    special = SpecialIds(bos=cls, eos=sep, unk=unk, pad=pad, add_bos=True, add_eos=True)
    return json.dumps(doc, ensure_ascii=False), special


#: Below this many characters in all, a batch is encoded text by text (``encode_batch``).
PARALLEL_ENCODE_MIN_CHARS = 1024


class WordPieceTokenizer:
    """Text <-> token ids with `<cls>`/`<sep>` around each text; same interface as `Tokenizer`."""

    def __init__(self, hf: HFTokenizer, special: SpecialIds):
        self._hf = hf
        self.special = special
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_gguf(cls, model_file: GGUFModelFile) -> WordPieceTokenizer:
        doc, special = tokenizer_json(model_file)
        try:
            hf = HFTokenizer.from_str(doc)
        except Exception as exc:  # tokenizers raises its own exception type for bad documents
            raise ModelFileError(
                f"{model_file.path}: tokenizer metadata does not form a valid WordPiece tokenizer ({exc})"
            ) from exc
        return cls(hf, special)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return self._hf.encode(text, add_special_tokens=add_special).ids

    def encode_batch(self, texts: Sequence[str], add_special: bool = True) -> list[list[int]]:
        # the library's batch call hands the texts to its thread pool: for a few short texts
        # (a query) the hand-off costs more than encoding them here one by one
        if sum(map(len, texts)) < PARALLEL_ENCODE_MIN_CHARS:
            return [self._hf.encode(text, add_special_tokens=add_special).ids for text in texts]
        # ``encode_batch_fast`` (tokenizers >= 0.21) skips the character offsets nobody reads
        batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        return [e.ids for e in batch(list(texts), add_special_tokens=add_special)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def n_special(self) -> int:
        return 2
