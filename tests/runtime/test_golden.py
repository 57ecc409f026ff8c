"""The real EmbeddingGemma against sentence-transformers golden data (scripts/make_golden.py).

Token ids must be identical; cosine to the fp32 torch reference must be ≥ 0.99999 from an F32
GGUF and ≥ 0.999 from Q8_0, on every text, at 768 and 256 dims, for query and document
prompts. Runs on the default (JIT) backend and on the numpy oracle.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pytest

from embedpipe.runtime.embedder import Embedder

pytestmark = pytest.mark.model

GOLDEN = Path(__file__).parent / "golden"
THRESHOLDS = {"f32": 0.99999, "q8_0": 0.999}
# (quant, backend) pairs: the default backend on both files, the numpy oracle on Q8_0.
CONFIGS = [("f32", "jit"), ("q8_0", "jit"), ("q8_0", "numpy")]


@lru_cache(maxsize=1)
def golden() -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((GOLDEN / "embeddinggemma_golden.json").read_text(encoding="utf-8"))
    with np.load(GOLDEN / "embeddinggemma_golden.npz") as arrays:
        return meta, {k: arrays[k] for k in arrays.files}


@lru_cache(maxsize=4)
def embedder(quant: str, backend: str) -> Embedder:
    from embedpipe.runtime.store import ensure_model

    return Embedder.load(ensure_model(quant), backend=backend)


@cache  # every (config, prompt): each forward serves both dims
def embeddings(quant: str, backend: str, prompt: str) -> np.ndarray:
    meta, _ = golden()
    emb = embedder(quant, backend)
    if prompt == "document_titled":
        rows = meta["titled"]
        return emb.encode([r["text"] for r in rows], task="document", titles=[r["title"] for r in rows])
    return emb.encode([r["text"] for r in meta["texts"]], task=prompt)


def test_golden_set_covers_long_empty_and_varied_texts():
    meta, arrays = golden()
    cats = {r["category"] for r in meta["texts"]}
    assert meta["n_texts"] >= 40 and arrays["query_768"].shape == (meta["n_texts"], 768)
    assert max(r["document_n_tokens"] for r in meta["texts"]) > 600
    assert any(r["text"] == "" for r in meta["texts"])
    assert len(cats) >= 8


@pytest.mark.parametrize("prompt", ["query", "document"])
def test_token_ids_identical(prompt):
    meta, _ = golden()
    emb = embedder("q8_0", "numpy")
    for r in meta["texts"]:
        got = emb.tokenize([r["text"]], task=prompt)[0]
        assert got == r[f"{prompt}_ids"], (r["index"], r["category"], r["text"][:60])


def test_titled_token_ids_identical():
    meta, _ = golden()
    emb = embedder("q8_0", "numpy")
    for r in meta["titled"]:
        assert emb.tokenize([r["text"]], task="document", titles=[r["title"]])[0] == r["document_ids"]


@pytest.mark.parametrize("quant, backend", CONFIGS)
@pytest.mark.parametrize("prompt", ["query", "document", "document_titled"])
@pytest.mark.parametrize("dim", [768, 256])
def test_embeddings_match_sentence_transformers(quant, backend, prompt, dim):
    _, arrays = golden()
    full = embeddings(quant, backend, prompt)
    got = full if dim == 768 else full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
    want = arrays[f"{prompt}_{dim}"]
    cos = np.sum(got * want, axis=1)
    print(f"{quant}/{backend} {prompt}@{dim}: min {cos.min():.6f} mean {cos.mean():.6f}")
    assert cos.min() >= THRESHOLDS[quant], f"worst row {int(cos.argmin())}: {cos.min():.6f}"


@pytest.mark.parametrize("prompt", ["query", "document"])
def test_single_texts_on_step_programs_match_sentence_transformers(prompt):
    """Each golden text alone (a short one runs the recorded step program): Q8_0 cos ≥ 0.999
    against sentence-transformers, and the same vector bit for bit as the op-by-op path."""
    meta, arrays = golden()
    emb = embedder("q8_0", "jit")
    model = emb.model
    texts = [r["text"] for r in meta["texts"]]
    want = arrays[f"{prompt}_768"]
    short = [i for i, t in enumerate(texts) if len(emb.tokenize([t], task=prompt)[0]) <= model.max_program_tokens]
    assert len(short) >= 20
    for i in short:
        got = emb.encode([texts[i]], task=prompt)[0]
        assert float(got @ want[i]) >= THRESHOLDS["q8_0"], (i, float(got @ want[i]))
        limit, model.max_program_tokens = model.max_program_tokens, 0
        try:
            np.testing.assert_array_equal(emb.encode([texts[i]], task=prompt)[0], got)
        finally:
            model.max_program_tokens = limit
    assert model._programs, "no step program ran"
