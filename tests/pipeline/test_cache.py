"""Embedding cache: hits, key isolation and concurrent access.

The re-ingest speedup is a benchmark figure (`embedpipe bench ingest`), not a timed test.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.pipeline.cache import CachedRow, EmbeddingCache, cache_key, default_cache_path


def test_second_run_comes_from_cache(run, corpus, tmp_path):
    first, a = run(corpus, cache_dir=str(tmp_path / "c"))
    second, b = run(corpus, cache_dir=str(tmp_path / "c"))
    assert first.cache_hits == 0 and first.sequences_embedded > 0
    assert second.cache_hits == 120 and second.sequences_embedded == 0
    assert a.to_pylist() == b.to_pylist()
    assert second.tokens == first.tokens and second.output_rows == first.output_rows


def test_chunked_rows_cached_with_spans(run, tmp_path):
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": [" ".join(["the lazy dog"] * 20), "fox"]}), path)
    first, a = run(path, max_tokens=40, cache_dir=str(tmp_path / "c"))
    second, b = run(path, max_tokens=40, cache_dir=str(tmp_path / "c"))
    assert second.sequences_embedded == 0 and a.to_pylist() == b.to_pylist() and second.chunked_rows == 1
    third, _ = run(path, max_tokens=40, long="truncate", cache_dir=str(tmp_path / "c"))
    assert third.cache_hits == 0 and third.truncated_rows == 1  # entries are per chunking setting


def test_task_and_model_never_share_entries(run, corpus, tmp_path, tiny_model_q8):
    from embedpipe.runtime.embedder import Embedder

    cache = str(tmp_path / "c")
    run(corpus, cache_dir=cache)
    query, _ = run(corpus, cache_dir=cache, task="query")
    assert query.cache_hits == 0
    other, _ = run(corpus, cache_dir=cache, embedder=Embedder.load(tiny_model_q8.path, backend="numpy"))
    assert other.cache_hits == 0


def test_key_isolation():
    base = dict(model_sha256="a" * 64, task="document", dim=256, title=None, text="hello", setting="chunk/2048/None/64")
    keys = {cache_key(**base)}
    for field, value in [("model_sha256", "b" * 64), ("task", "query"), ("dim", 128), ("title", "none"),
                         ("title", ""), ("text", "hello "), ("setting", "truncate/2048/None/64")]:
        keys.add(cache_key(**{**base, field: value}))
    assert len(keys) == 8


def test_wrong_shape_entry_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    row = CachedRow([(0, 3)], [5], np.ones((1, 8), np.float32) / np.sqrt(8), 3, False)
    cache.put_many([(b"k" * 32, "m", 8, row)])
    assert cache.get_many([b"k" * 32], 8)[b"k" * 32].spans == [(0, 3)]
    assert cache.get_many([b"k" * 32], 16) == {}


def test_default_location_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "embeddings.sqlite"


def test_concurrent_readers_and_writers(tmp_path):
    path = tmp_path / "e.sqlite"
    dim = 16
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            cache = EmbeddingCache(path, memory_bytes=0)
            for i in range(30):
                keys = [f"{w}-{i}-{j}".encode().ljust(32, b".") for j in range(20)]
                cache.put_many([(k, "m", dim, CachedRow([(0, 1)], [3], np.full((1, dim), w, np.float32), 1, False))
                                for k in keys])
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            cache = EmbeddingCache(path, memory_bytes=0)
            for i in range(60):
                got = cache.get_many([f"0-{i % 30}-{j}".encode().ljust(32, b".") for j in range(20)], dim)
                assert all(float(r.vectors[0, 0]) == 0.0 for r in got.values())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)] + \
              [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(EmbeddingCache(path).get_many([f"1-29-{j}".encode().ljust(32, b".") for j in range(20)], dim)) == 20
