"""AsyncEmbedder gives the vectors Embedder.encode gives, for concurrent callers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.async_embedder import AsyncEmbedder
from embedpipe.runtime.embedder import Embedder


@pytest.fixture(scope="module")
def emb(tiny_gguf):
    return Embedder.load(tiny_gguf, backend="numpy")


TEXTS = ["the quick brown fox", "bread flour water salt yeast " * 5, "vector", "a b c d e f g"]


def test_concurrent_aencode_matches_encode(emb):
    passes = []

    async def main():
        async with AsyncEmbedder(emb, max_batch_tokens=256, on_pass=passes.append) as aemb:
            calls = [aemb.aencode([t], task="query") for t in TEXTS * 4]
            calls.append(aemb.aencode(TEXTS, task="document", titles=["x", None, "y", None], dim=32, any_dim=True))
            return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    for text, out in zip(TEXTS * 4, outs):
        np.testing.assert_allclose(out, emb.encode([text], task="query"), atol=2e-6)
    ref = emb.encode(TEXTS, task="document", titles=["x", None, "y", None], dim=32, any_dim=True)
    np.testing.assert_allclose(outs[-1], ref, atol=2e-6)
    assert any(p.requests > 1 for p in passes)


def test_aencode_errors_are_embedpipe_errors(emb):
    async def main():
        async with AsyncEmbedder(emb) as aemb:
            with pytest.raises(EmbedpipeError):
                await aemb.aencode("a string")
            with pytest.raises(EmbedpipeError, match="got NoneType"):  # was a TypeError
                await aemb.aencode(None)
            assert (await aemb.aencode(t for t in ["x"])).shape == (1, emb.dim)
            with pytest.raises(EmbedpipeError):
                await aemb.aencode(["x" * 5000])
            with pytest.raises(EmbedpipeError):
                await aemb.aencode(["x"], dim=10_000)
            out = await aemb.aencode(["x" * 5000], truncate=True)
            assert out.shape == (1, emb.dim)

    asyncio.run(main())
