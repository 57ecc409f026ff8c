"""Embedding cache: an in-memory LRU over one SQLite file (WAL: many readers, one writer at a time).

A key is the SHA-256 of (model SHA-256, task, dim, title, SHA-256(text), chunking setting), so
vectors of different models, tasks, dims or titles never collide. One entry holds everything an
input row became (its chunks' spans and token counts plus float32 vectors), so an unchanged
corpus is re-ingested without tokenizing or running the model.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

from embedpipe.errors import EmbedpipeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key BLOB PRIMARY KEY,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID
"""
LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's bound-variable limit
HEADER = struct.Struct("<iii")  # n_chunks, truncated, text_tokens
SPAN = struct.Struct("<iii")  # token_start, token_end, sequence tokens


CACHE_FILE = "embeddings.sqlite"


def default_cache_path() -> Path:
    root = os.environ.get("EMBEDPIPE_CACHE_DIR")
    return (Path(root) if root else Path(user_cache_dir("embedpipe"))) / CACHE_FILE


@dataclass
class CachedRow:
    """What one input row became: chunk spans, sequence lengths and unit vectors."""

    spans: list[tuple[int, int]]
    seq_tokens: list[int]
    vectors: np.ndarray  # (n_chunks, dim) float32
    text_tokens: int
    truncated: bool

    def pack(self) -> bytes:
        head = HEADER.pack(len(self.spans), int(self.truncated), self.text_tokens)
        spans = b"".join(SPAN.pack(s, e, n) for (s, e), n in zip(self.spans, self.seq_tokens))
        return head + spans + np.ascontiguousarray(self.vectors, np.float32).tobytes()

    @classmethod
    def unpack(cls, blob: bytes, dim: int) -> "CachedRow | None":
        """None for a blob of the wrong shape (treated as a miss, then overwritten)."""
        if len(blob) < HEADER.size:
            return None
        n, truncated, text_tokens = HEADER.unpack_from(blob)
        if n <= 0 or len(blob) != HEADER.size + n * (SPAN.size + 4 * dim):
            return None
        rows = [SPAN.unpack_from(blob, HEADER.size + i * SPAN.size) for i in range(n)]
        vecs = np.frombuffer(blob, np.float32, n * dim, HEADER.size + n * SPAN.size).reshape(n, dim)
        return cls([(s, e) for s, e, _ in rows], [k for _, _, k in rows], vecs, text_tokens, bool(truncated))


def cache_key(model_sha256: str, task: str, dim: int, title: str | None, text: str, setting: str) -> bytes:
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    title_part = "\x00" if title is None else "t" + title
    raw = "\x1f".join((model_sha256, task, str(dim), title_part, text_sha, setting))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """get_many / put_many over SQLite with a bounded LRU in front."""

    def __init__(self, path: Path | str | None = None, memory_bytes: int = 64 << 20):
        self.path = Path(path) if path else default_cache_path()
        self.memory_bytes = memory_bytes
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._lru_bytes = 0
        self.hits = 0
        self.misses = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise EmbedpipeError(f"embedding cache {self.path}: cannot open ({exc}); use --no-cache or set EMBEDPIPE_CACHE_DIR") from exc

    @classmethod
    def in_dir(cls, cache_dir: str | os.PathLike | None) -> "EmbeddingCache":
        """The cache file in `cache_dir` (a `--cache-dir` option), or the default one."""
        return cls(Path(cache_dir) / CACHE_FILE if cache_dir else None)

    def _remember(self, key: bytes, blob: bytes) -> None:
        if key in self._lru:
            self._lru.move_to_end(key)
            return
        self._lru[key] = blob
        self._lru_bytes += len(blob) + len(key)
        while self._lru_bytes > self.memory_bytes and self._lru:
            k, v = self._lru.popitem(last=False)
            self._lru_bytes -= len(k) + len(v)

    def get_many(self, keys: list[bytes], dim: int) -> dict[bytes, CachedRow]:
        found: dict[bytes, bytes] = {}
        wanted = []
        for k in dict.fromkeys(keys):
            blob = self._lru.get(k)
            if blob is None:
                wanted.append(k)
            else:
                self._lru.move_to_end(k)
                found[k] = blob
        for i in range(0, len(wanted), LOOKUP_CHUNK):
            part = wanted[i:i + LOOKUP_CHUNK]
            sql = f"SELECT key, value FROM embeddings WHERE key IN ({','.join('?' * len(part))})"
            try:
                rows = self._db.execute(sql, part).fetchall()
            except sqlite3.Error as exc:
                raise EmbedpipeError(f"embedding cache {self.path}: read failed ({exc})") from exc
            for k, blob in rows:
                found[bytes(k)] = bytes(blob)
                self._remember(bytes(k), bytes(blob))
        out = {}
        for k, blob in found.items():
            row = CachedRow.unpack(blob, dim)
            if row is not None:
                out[k] = row
        self.hits += sum(1 for k in keys if k in out)
        self.misses += sum(1 for k in keys if k not in out)
        return out

    def put_many(self, items: list[tuple[bytes, str, int, CachedRow]]) -> None:
        """Insert (key, model sha, dim, row) in one transaction."""
        if not items:
            return
        blobs = [(k, model, dim, row.pack()) for k, model, dim, row in items]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings (key, model, dim, value) VALUES (?, ?, ?, ?)", blobs)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise EmbedpipeError(f"embedding cache {self.path}: write failed ({exc})") from exc
        for k, _, _, blob in blobs:
            self._remember(k, blob)

    def summary(self) -> list[CacheGroup]:
        """Entries and stored bytes per (model SHA-256, dim), largest first."""
        sql = ("SELECT model, dim, COUNT(*), SUM(LENGTH(value) + LENGTH(key)) FROM embeddings "
               "GROUP BY model, dim ORDER BY 4 DESC")
        try:
            return [CacheGroup(m, int(d), int(n), int(b or 0)) for m, d, n, b in self._db.execute(sql)]
        except sqlite3.Error as exc:
            raise EmbedpipeError(f"embedding cache {self.path}: read failed ({exc})") from exc

    def clear(self, model_prefix: str | None = None) -> int:
        """Delete every entry (or those of models whose SHA-256 starts with `model_prefix`),
        then VACUUM so the file shrinks; returns the number of entries deleted."""
        where, args = ("WHERE model LIKE ? || '%'", [model_prefix.lower()]) if model_prefix else ("", [])
        try:
            deleted = self._db.execute(f"DELETE FROM embeddings {where}", args).rowcount
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise EmbedpipeError(f"embedding cache {self.path}: clear failed ({exc})") from exc
        self._lru.clear()
        self._lru_bytes = 0
        return int(deleted)

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class CacheGroup:
    model: str  # SHA-256 of the GGUF file that made the vectors
    dim: int
    entries: int
    bytes: int


def model_prefix(value: str) -> str:
    """A SHA-256 prefix naming a model's entries for `clear`: at least 4 hex digits, lower-cased
    (a shorter one would match models by accident). ValueError otherwise."""
    if len(value) < 4 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError("--model takes a hex SHA-256 prefix of at least 4 characters")
    return value.lower()


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of the cache file at `path`, its write-ahead log included."""
    return sum(p.stat().st_size for p in (Path(path), Path(f"{path}-wal")) if p.exists())
