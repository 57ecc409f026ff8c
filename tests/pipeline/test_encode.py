"""`encode_cached`: Embedder.encode through the ingest cache, keys shared with `ingest --long truncate`."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.pipeline.encode import encode_cached
from tests.pipeline.conftest import make_texts


def test_vectors_equal_encode_and_second_call_runs_no_model(tiny_emb, tmp_path, monkeypatch):
    texts = make_texts(12, seed=3) + ["the fox"] * 2  # a repeated text is embedded once
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    got = encode_cached(tiny_emb, texts, "query", dim=32, cache=cache, any_dim=True)
    np.testing.assert_allclose(got, tiny_emb.encode(texts, task="query", dim=32, any_dim=True), atol=1e-6)
    assert len(cache.summary()) == 1 and cache.summary()[0].entries == len(set(texts))
    calls = []
    real = tiny_emb.encode_ids
    monkeypatch.setattr(tiny_emb, "encode_ids", lambda ids, **kw: calls.append(len(ids)) or real(ids, **kw))
    again = encode_cached(tiny_emb, texts[::-1], "query", dim=32, cache=cache, any_dim=True)
    np.testing.assert_array_equal(again, got[::-1])
    assert calls == []


def test_shares_cache_entries_with_ingest_truncate(run, tiny_emb, corpus, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    _, table = run(corpus, long="truncate", task="document")
    texts = pq.read_table(corpus).column("text").to_pylist()[:20]
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite")
    monkeypatch.setattr(tiny_emb, "encode_ids", lambda *a, **k: pytest.fail("cache miss"))
    got = encode_cached(tiny_emb, texts, "document", cache=cache)
    stored = np.asarray(table.column("embedding").to_pylist()[:20], np.float32)
    np.testing.assert_array_equal(got, stored)


def test_empty_text_is_an_error_naming_its_position(tiny_emb):
    with pytest.raises(EmbedpipeError, match="text 1 is empty"):
        encode_cached(tiny_emb, ["ok", "  "], "query")
    assert encode_cached(tiny_emb, [], "query").shape == (0, tiny_emb.dims[0])
