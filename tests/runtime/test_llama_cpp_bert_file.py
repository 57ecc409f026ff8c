"""A BERT GGUF written by llama.cpp's own converter (tests/runtime/data/tiny-bert-llama-cpp-f16.gguf,
made by scripts/make_llama_cpp_bert_fixture.py): we load it with the checkout's token ids and
sentence-transformers' vectors (recorded beside it when it was made), its "phantom space"
vocabulary undone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.wordpiece import PHANTOM, tokenizer_json

DATA = Path(__file__).parent / "data"
GGUF = DATA / "tiny-bert-llama-cpp-f16.gguf"
RECORD = json.loads((DATA / "tiny-bert-llama-cpp.json").read_text(encoding="utf-8"))


def test_the_fixture_is_llama_cpps_rewrite() -> None:
    mf = GGUFModelFile(GGUF)
    assert mf.architecture == "bert"
    assert not [k for k in mf.metadata if k.startswith("embedpipe.")]
    raw = [p.decode() if isinstance(p, bytes) else str(p) for p in mf.require("tokenizer.ggml.tokens")]
    assert raw[2003] == PHANTOM + "is" and raw[101] == "[CLS]"
    assert not any(p.startswith("##") for p in raw)


def test_phantom_space_vocabulary_is_undone() -> None:
    doc = json.loads(tokenizer_json(GGUFModelFile(GGUF))[0])
    vocab = doc["model"]["vocab"]
    assert vocab["is"] == 2003 and vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102 and vocab["[UNK]"] == 100
    assert vocab["##ing"] == 2075 and "ing" in vocab and vocab["ing"] != 2075
    assert not any(piece.startswith(PHANTOM) for piece in vocab)


@pytest.mark.parametrize("backend", ["numpy", "jit"])
def test_ids_and_vectors_match_the_checkout(backend: str) -> None:
    emb = Embedder.load(GGUF, backend=backend)
    assert emb.prompts == "none" and emb.dim == 32
    texts = RECORD["texts"]
    assert emb.tokenize(texts, "none") == RECORD["ids"]
    cos = (emb.encode(texts, task="none").astype(np.float64) * np.asarray(RECORD["vectors"])).sum(1)
    assert cos.min() >= 0.99999, cos
