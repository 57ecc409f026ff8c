"""llama.cpp interop on the tiny BERT: llama.cpp (llama-cpp-python) loads the GGUF our converter
writes, tokenizes it as we do on plain text, and computes the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.runtime.bench_peers import extra_buffer_types
from embedpipe.runtime.convert import convert_checkout
from embedpipe.runtime.embedder import Embedder
from tests.runtime.bert_checkout_builder import build_bert_checkout

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'embedpipe[bench]')"
)

# Plain lowercase text: llama.cpp's WPM tokenizer has no accent stripping and no 100-char rule,
# so those inputs are where the two tokenizers are expected to differ.
TEXTS = ["hello world", "the quick brown fox", "jump, unbelievable!", "fox (the) [brown]", "cafe naive"]


@pytest.fixture(scope="module", params=["f32", "q8_0"])
def files(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("llama")
    src = build_bert_checkout(base / "ckpt")
    return request.param, convert_checkout(src, base / f"tiny-{request.param}.gguf", request.param)


def test_llama_cpp_loads_our_bert_and_agrees(files) -> None:
    quant, path = files
    with extra_buffer_types(llama_cpp):  # its AMX matmul crashes the process on AMX hosts
        llm = llama_cpp.Llama(
            model_path=str(path), embedding=True, n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1, verbose=False
        )
    try:
        ours = Embedder.load(path, backend="numpy")
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == ours.tokenize([text], "none")[0], text
        theirs = np.asarray(llm.embed(TEXTS, normalize=True), dtype=np.float64)
    finally:
        llm.close()
    cos = (ours.encode(TEXTS, task="none").astype(np.float64) * theirs).sum(1)
    assert cos.min() >= (0.9999 if quant == "f32" else 0.999), cos
