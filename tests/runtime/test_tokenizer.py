"""The tokenizer rebuilt from GGUF metadata gives the trained SentencePiece model's ids."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm
from synthetic import TinyConfig, build_tiny_model

from embedpipe.errors import ModelFileError
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.tokenizer import Tokenizer

SAMPLES = [
    "",
    " ",
    "  two spaces",
    "tab\there",
    "line\nbreak\r\n",
    "The quick brown fox.",
    "1234567890",
    "ünïcödé",
    "日本語のテキスト",
    "مرحبا بالعالم",
    "emoji 🙂🚀",
    "def f(x):\n    return x",
    "MiXeD CaSe",
    "https://example.com/a?b=c",
    "\u200b zero width",
    "a" * 300,
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abc XYZ 012 \t\n.,;!? éß中文🙂\u0301"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def pair(tiny_model):
    return spm.SentencePieceProcessor(model_proto=tiny_model.spm_model), Tokenizer.from_gguf(
        GGUFModelFile(tiny_model.path)
    )


@pytest.mark.parametrize("text", SAMPLES + _random_strings(50))
def test_ids_match_sentencepiece(pair, text):
    sp, tok = pair
    assert tok.encode(text, add_special=False) == sp.encode(text)


@pytest.mark.parametrize("threshold", [0, 10**9])
def test_batches_encode_alike_on_this_thread_and_on_sentencepiece_threads(pair, threshold, monkeypatch):
    """Below THREADED_ENCODE_MIN_CHARS a batch is encoded text by text, above it by
    SentencePiece's threaded list call: the ids are the same either way."""
    from embedpipe.runtime import tokenizer

    monkeypatch.setattr(tokenizer, "THREADED_ENCODE_MIN_CHARS", threshold)
    sp, tok = pair
    texts = SAMPLES + _random_strings(20, seed=3)
    assert tok.encode_batch(texts, add_special=False) == [sp.encode(t) for t in texts]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def test_bos_eos_follow_gguf_flags(pair):
    _, tok = pair
    ids = tok.encode("hello")
    assert ids[0] == 2 and ids[-1] == 1
    assert tok.encode("") == [2, 1]


def test_decode_round_trips(pair):
    _, tok = pair
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


def test_non_llama_tokenizer_is_refused(tmp_path):

    model = build_tiny_model(tmp_path, cfg=TinyConfig())
    raw = bytearray(model.path.read_bytes())
    key = b"tokenizer.ggml.model"
    at = raw.find(key) + len(key) + 4 + 8  # value type (u32), then string length (u64)
    assert raw[at : at + 5] == b"llama"
    raw[at : at + 5] = b"gpt2x"
    bad = tmp_path / "bpe.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="tokenizer model 'gpt2x' is not supported"):
        Tokenizer.from_gguf(GGUFModelFile(bad))
