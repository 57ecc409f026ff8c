"""Embedding cache: hits, key isolation and concurrent access.

The re-ingest speedup is a benchmark figure (`embedpipe bench ingest`), not a timed test.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
    for field, value in [
        ("model_sha256", "b" * 64),
        ("task", "query"),
        ("dim", 128),
        ("title", "none"),
        ("text", "hello "),
        ("setting", "truncate/2048/None/64"),
    ]:
        keys.add(cache_key(**{**base, field: value}))
    assert len(keys) == 7
    # an empty title makes the same prompt as no title, so the same entry (a blank CSV cell)
    assert cache_key(**{**base, "title": ""}) == cache_key(**base)


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
                cache.put_many(
                    [(k, "m", dim, CachedRow([(0, 1)], [3], np.full((1, dim), w, np.float32), 1, False)) for k in keys]
                )
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

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(EmbeddingCache(path).get_many([f"1-29-{j}".encode().ljust(32, b".") for j in range(20)], dim)) == 20


def _fill(cache: EmbeddingCache, model: str, dim: int, n: int) -> None:
    row = CachedRow([(0, 3)], [5], np.ones((1, dim), np.float32), 3, False)
    cache.put_many([(cache_key(model, "document", dim, None, f"t{i}", "s"), model, dim, row) for i in range(n)])


def test_summary_and_clear_by_model(tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    _fill(cache, "aa" * 32, 768, 30)
    _fill(cache, "bb" * 32, 256, 10)
    groups = {(g.model, g.dim): g for g in cache.summary()}
    assert groups[("aa" * 32, 768)].entries == 30 and groups[("bb" * 32, 256)].entries == 10
    assert groups[("aa" * 32, 768)].bytes > 30 * 768 * 4
    assert cache.clear("BBBB") == 10  # prefixes are case-insensitive
    assert [(g.model, g.entries) for g in cache.summary()] == [("aa" * 32, 30)]
    key = cache_key("aa" * 32, "document", 768, None, "t0", "s")
    assert key in cache.get_many([key], 768)
    assert cache.clear() == 30 and cache.summary() == []
    assert cache.get_many([key], 768) == {}  # the in-memory LRU is emptied too
    cache.close()


def test_cache_cli_info_and_clear(tmp_path):
    from typer.testing import CliRunner

    from embedpipe.cli.app import app

    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    _fill(cache, "ab" * 32, 64, 7)
    cache.close()
    runner = CliRunner()
    out = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert out.exit_code == 0 and "abababababababab    64         7" in out.output
    refused = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path)], input="n\n")
    assert refused.exit_code == 1
    bad = runner.invoke(app, ["cache", "clear", "--model", "xyz!", "--cache-dir", str(tmp_path)])
    assert bad.exit_code != 0 and "hex SHA-256 prefix" in bad.output
    done = runner.invoke(app, ["cache", "clear", "-y", "--cache-dir", str(tmp_path)])
    assert done.exit_code == 0 and "deleted 7 entries" in done.output
    out = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert "total" in out.output and " 0 " in out.output


def _row(dim: int, value: float = 1.0) -> CachedRow:
    return CachedRow([(0, 3)], [5], np.full((1, dim), value, np.float32), 3, False)


def test_memory_level_is_bounded_and_counts_evictions(tmp_path):
    dim = 32
    entry = len(_row(dim).pack()) + 32
    cache = EmbeddingCache(tmp_path / "e.sqlite", memory_bytes=5 * entry)
    keys = [bytes([i]) * 32 for i in range(8)]
    cache.put_many([(k, "m", dim, _row(dim, i)) for i, k in enumerate(keys)])
    stats = cache.stats()
    assert stats.memory_bytes <= 5 * entry and stats.memory_evictions == 3
    got = cache.get_many(keys, dim)  # all 8 answered: 5 from memory, 3 from the file
    assert len(got) == 8 and [float(got[k].vectors[0, 0]) for k in keys] == list(range(8))
    stats = cache.stats()
    assert (stats.memory_hits, stats.disk_hits, stats.misses) == (5, 3, 0)


def test_memory_level_never_exceeds_the_whole_cache_bound(tmp_path):
    dim = 32
    entry = len(_row(dim).pack()) + 32
    cache = EmbeddingCache(tmp_path / "e.sqlite", memory_bytes=64 << 20, max_bytes=4 * entry)
    cache.put_many([(bytes([i]) * 32, "m", dim, _row(dim, i)) for i in range(16)])
    assert cache.memory_bytes == 4 * entry and cache.stats().memory_bytes <= 4 * entry


def test_disk_level_evicts_least_recently_used(tmp_path):
    dim = 64
    entry = len(_row(dim).pack()) + 32
    path = tmp_path / "e.sqlite"
    cache = EmbeddingCache(path, memory_bytes=0, max_bytes=10 * entry)
    keys = [bytes([i]) * 32 for i in range(10)]
    cache.put_many([(k, "m", dim, _row(dim)) for k in keys[:5]])
    cache.put_many([(k, "m", dim, _row(dim)) for k in keys[5:]])
    assert cache.stats().disk_evictions == 0
    assert len(cache.get_many(keys[:2], dim)) == 2  # keys 0 and 1 become the most recent
    newer = [bytes([100 + i]) * 32 for i in range(3)]
    cache.put_many([(k, "m", dim, _row(dim)) for k in newer])
    stats = cache.stats()
    assert stats.disk_evictions >= 3
    assert sum(g.bytes for g in cache.summary()) <= 10 * entry
    fresh = EmbeddingCache(path, memory_bytes=0)  # what is left in the file, memory level cold
    left = fresh.get_many(keys + newer, dim)
    assert all(k in left for k in keys[:2] + newer)  # recently used and new entries stay
    assert keys[2] not in left and keys[3] not in left  # the oldest untouched ones went first


def test_old_file_without_recency_column_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "e.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE embeddings (key BLOB PRIMARY KEY, model TEXT NOT NULL, dim INTEGER NOT NULL, "
        "value BLOB NOT NULL) WITHOUT ROWID"
    )
    db.execute("INSERT INTO embeddings VALUES (?, 'm', 8, ?)", (b"k" * 32, _row(8).pack()))
    db.commit()
    db.close()
    cache = EmbeddingCache(path, max_bytes=1 << 20)
    assert b"k" * 32 in cache.get_many([b"k" * 32], 8)
    cache.put_many([(b"n" * 32, "m", 8, _row(8))])
    assert len(cache.get_many([b"k" * 32, b"n" * 32], 8)) == 2


def test_ingest_honours_cache_bound(run, corpus, tmp_path):
    first, _ = run(corpus, cache_dir=str(tmp_path / "c"), cache_max_bytes=20_000)
    cache = EmbeddingCache.in_dir(tmp_path / "c")
    assert 0 < sum(g.bytes for g in cache.summary()) <= 20_000


def test_many_processes_opening_a_new_cache_file_at_once(tmp_path):
    """Opening a new file from several connections at once: SQLite refuses the switch to WAL
    with "database is locked" (no busy wait) to all but one; every open still succeeds."""
    errors: list[BaseException] = []

    def open_it(path: Path) -> None:
        try:
            EmbeddingCache(path, memory_bytes=0)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    for trial in range(100):
        path = tmp_path / f"c{trial}.sqlite"
        threads = [threading.Thread(target=open_it, args=(path,)) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_wal_switch_retries_only_a_locked_file():
    from embedpipe.pipeline import cache as cache_mod

    class Flaky:
        def __init__(self, failures: list[str]):
            self.failures, self.calls = failures, 0

        def execute(self, sql: str):
            self.calls += 1
            if self.failures:
                raise sqlite3.OperationalError(self.failures.pop(0))

    db = Flaky(["database is locked", "database is locked"])
    cache_mod._use_wal(db)
    assert db.calls == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        cache_mod._use_wal(Flaky(["disk I/O error"]))
