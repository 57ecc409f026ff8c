"""Embedding cache, two levels: an in-memory LRU in front of one SQLite file (WAL: many readers,
one writer at a time). Both levels are bounded and evict the least recently used entries: the
memory level by `memory_bytes`, the file by `max_bytes` (None: unbounded).

A key is the SHA-256 of (model SHA-256, task, dim, title, SHA-256(text), chunking setting), so
vectors of different models, tasks, dims or titles never collide. One entry holds everything an
input row became (its chunks' spans and token counts plus float32 vectors), so an unchanged
corpus is re-ingested without tokenizing or running the model.

Recency on disk is a `used` timestamp per entry, written on insert and on a hit served from the
file; hits served by the memory level do not touch the file (the hot set lives in memory).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedpipe.errors import EmbedpipeError, ModelFileError
from embedpipe.runtime import cache_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key BLOB PRIMARY KEY,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    value BLOB NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
SUMMARY_SQL = (
    "SELECT model, dim, COUNT(*), SUM(LENGTH(value) + LENGTH(key)) FROM embeddings GROUP BY model, dim ORDER BY 4 DESC"
)
USED_INDEX = "CREATE INDEX IF NOT EXISTS embeddings_used ON embeddings (used)"
LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's bound-variable limit
HEADER = struct.Struct("<iii")  # n_chunks, truncated, text_tokens
SPAN = struct.Struct("<iii")  # token_start, token_end, sequence tokens
# Eviction frees down to this fraction of max_bytes, so a full cache does not evict on every put.
EVICT_TO = 0.9


CACHE_FILE = "embeddings.sqlite"
#: How long opening the file waits for other processes' locks.
OPEN_TIMEOUT_S = 60.0


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging.  SQLite answers this pragma "database is locked"
    at once, without its busy wait, while another connection opening the same new file holds
    the lock (several ingest workers starting together): retry until the open timeout."""
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.2)


def default_cache_path() -> Path:
    return cache_path()


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file in `cache_dir` (a `--cache-dir` option), else in the cache root
    ($EMBEDPIPE_CACHE_DIR, else the user cache dir; `runtime.cache_root`)."""
    return cache_root.cache_dir(cache_dir) / CACHE_FILE


def existing_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_path(cache_dir)` for commands that only look at or prune the cache, so never
    create it: a `cache_dir` given explicitly must exist (a typo is an error naming it)."""
    if cache_dir is not None and os.fspath(cache_dir):
        root = cache_root.cache_dir(cache_dir)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "no such directory"
            raise EmbedpipeError(f"{root}: {what} (nothing is cached there)")
    return cache_path(cache_dir)


def _now_us() -> int:
    return time.time_ns() // 1000


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
    def unpack(cls, blob: bytes, dim: int) -> CachedRow | None:
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
    # an empty title makes the same prompt as no title (prompts.Convention.prefix), so the same key
    title_part = "t" + title if title else "\x00"
    raw = "\x1f".join((model_sha256, task, str(dim), title_part, text_sha, setting))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was opened (what /metrics exports)."""

    hits: int
    misses: int
    memory_hits: int
    disk_hits: int
    memory_evictions: int
    disk_evictions: int
    memory_bytes: int
    disk_bytes: int | None  # None until a bounded cache first measures its file


class EmbeddingCache:
    """get_many / put_many over SQLite with a bounded LRU in front; safe to share between threads."""

    def __init__(self, path: Path | str | None = None, memory_bytes: int = 64 << 20, max_bytes: int | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise EmbedpipeError(f"cache size bound must be positive, got {max_bytes} bytes")
        self.path = Path(path) if path else default_cache_path()
        # The memory level sits in front of the file: it never holds more than the whole cache may.
        self.memory_bytes = memory_bytes if max_bytes is None else min(memory_bytes, max_bytes)
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._lru_bytes = 0
        self._disk_bytes: int | None = None  # kept up to date only when max_bytes is set
        self.hits = self.misses = self.memory_hits = self.disk_hits = 0
        self.memory_evictions = self.disk_evictions = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            _use_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._migrate()
            self._db.execute(USED_INDEX)
        except (sqlite3.Error, OSError) as exc:
            raise EmbedpipeError(
                f"embedding cache {self.path}: cannot open ({exc}); use --no-cache or set EMBEDPIPE_CACHE_DIR"
            ) from exc

    def _migrate(self) -> None:
        """Files written before the size bound have no `used` column: add it (all entries equally old)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(embeddings)")}
        if "used" not in columns:
            self._db.execute("ALTER TABLE embeddings ADD COLUMN used INTEGER NOT NULL DEFAULT 0")

    @classmethod
    def in_dir(
        cls, cache_dir: str | os.PathLike | None, max_bytes: int | None = None, memory_bytes: int = 64 << 20
    ) -> EmbeddingCache:
        """The cache file in `cache_dir` (a `--cache-dir` option), or the default one."""
        return cls(cache_path(cache_dir), memory_bytes, max_bytes)

    def _remember(self, key: bytes, blob: bytes) -> None:
        if key in self._lru:
            self._lru.move_to_end(key)
            return
        self._lru[key] = blob
        self._lru_bytes += len(blob) + len(key)
        while self._lru_bytes > self.memory_bytes and self._lru:
            k, v = self._lru.popitem(last=False)
            self._lru_bytes -= len(k) + len(v)
            self.memory_evictions += 1

    def get_many(self, keys: list[bytes], dim: int) -> dict[bytes, CachedRow]:
        with self._lock:
            return self._get_many(keys, dim)

    def _get_many(self, keys: list[bytes], dim: int) -> dict[bytes, CachedRow]:
        found: dict[bytes, bytes] = {}
        wanted = []
        for k in dict.fromkeys(keys):
            blob = self._lru.get(k)
            if blob is None:
                wanted.append(k)
            else:
                self._lru.move_to_end(k)
                found[k] = blob
        from_memory = set(found)
        from_disk: list[bytes] = []
        for i in range(0, len(wanted), LOOKUP_CHUNK):
            part = wanted[i : i + LOOKUP_CHUNK]
            sql = f"SELECT key, value FROM embeddings WHERE key IN ({','.join('?' * len(part))})"
            try:
                rows = self._db.execute(sql, part).fetchall()
            except sqlite3.Error as exc:
                raise EmbedpipeError(f"embedding cache {self.path}: read failed ({exc})") from exc
            for k, blob in rows:
                found[bytes(k)] = bytes(blob)
                from_disk.append(bytes(k))
                self._remember(bytes(k), bytes(blob))
        if from_disk and self.max_bytes is not None:
            self._touch(from_disk)
        out = {}
        for k, blob in found.items():
            row = CachedRow.unpack(blob, dim)
            if row is not None:
                out[k] = row
        for k in keys:
            if k in out:
                self.hits += 1
                if k in from_memory:
                    self.memory_hits += 1
                else:
                    self.disk_hits += 1
            else:
                self.misses += 1
        return out

    def _touch(self, keys: list[bytes]) -> None:
        """Mark entries read from the file as recently used (the file's LRU order)."""
        now = _now_us()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE embeddings SET used = ? WHERE key = ?", [(now, k) for k in keys])
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            # recency is advisory: a busy file must not fail a read

    def put_many(self, items: list[tuple[bytes, str, int, CachedRow]]) -> None:
        """Insert (key, model sha, dim, row) in one transaction, then evict past `max_bytes`."""
        if not items:
            return
        now = _now_us()
        blobs = [(k, model, dim, row.pack(), now) for k, model, dim, row in items]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO embeddings (key, model, dim, value, used) VALUES (?, ?, ?, ?, ?)", blobs
                    )
                    if self.max_bytes is not None:
                        self._bound_disk(sum(len(k) + len(b) for k, _, _, b, _ in blobs))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise EmbedpipeError(f"embedding cache {self.path}: write failed ({exc})") from exc
            for k, _, _, blob, _ in blobs:
                self._remember(k, blob)

    def _stored_bytes(self) -> int:
        row = self._db.execute("SELECT SUM(LENGTH(value) + LENGTH(key)) FROM embeddings").fetchone()
        return int(row[0] or 0)

    def _bound_disk(self, added: int) -> None:
        """Inside the write transaction: delete least recently used entries past `max_bytes`.

        The running total is an estimate (other processes write too, replaced keys are counted
        twice); it is measured exactly whenever it says the bound is crossed."""
        self._disk_bytes = self._stored_bytes() if self._disk_bytes is None else self._disk_bytes + added
        if self._disk_bytes <= self.max_bytes:
            return
        self._disk_bytes = self._stored_bytes()
        excess = self._disk_bytes - int(self.max_bytes * EVICT_TO)
        if excess <= 0:
            return
        victims: list[bytes] = []
        freed = 0
        for key, size in self._db.execute("SELECT key, LENGTH(value) + LENGTH(key) FROM embeddings ORDER BY used"):
            victims.append(bytes(key))
            freed += int(size)
            if freed >= excess:
                break
        for i in range(0, len(victims), LOOKUP_CHUNK):
            part = victims[i : i + LOOKUP_CHUNK]
            self._db.execute(f"DELETE FROM embeddings WHERE key IN ({','.join('?' * len(part))})", part)
        self._disk_bytes -= freed
        self.disk_evictions += len(victims)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self.hits,
                self.misses,
                self.memory_hits,
                self.disk_hits,
                self.memory_evictions,
                self.disk_evictions,
                self._lru_bytes,
                self._disk_bytes,
            )

    def summary(self) -> list[CacheGroup]:
        """Entries and stored bytes per (model SHA-256, dim), largest first."""
        try:
            with self._lock:
                return [CacheGroup(m, int(d), int(n), int(b or 0)) for m, d, n, b in self._db.execute(SUMMARY_SQL)]
        except sqlite3.Error as exc:
            raise EmbedpipeError(f"embedding cache {self.path}: read failed ({exc})") from exc

    def clear(self, model_prefix: str | None = None) -> int:
        """Delete every entry (or those of models whose SHA-256 starts with `model_prefix`),
        then VACUUM so the file shrinks; returns the number of entries deleted."""
        where, args = ("WHERE model LIKE ? || '%'", [model_prefix.lower()]) if model_prefix else ("", [])
        with self._lock:
            try:
                deleted = self._db.execute(f"DELETE FROM embeddings {where}", args).rowcount
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise EmbedpipeError(f"embedding cache {self.path}: clear failed ({exc})") from exc
            self._lru.clear()
            self._lru_bytes = 0
            self._disk_bytes = None
        return int(deleted)

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class CacheGroup:
    model: str  # SHA-256 of the GGUF file that made the vectors
    dim: int
    entries: int
    bytes: int


def read_summary(path: str | os.PathLike) -> list[CacheGroup] | None:
    """`EmbeddingCache.summary` of the file at `path` without creating anything (no directory,
    no file, nothing left beside it). None when there is no cache file there.

    The file is opened `mode=rw` (never created; SQLite falls back to reading a file this
    process may not write) and only read, so that closing this last connection removes the
    `-wal`/`-shm` files that any reader of a WAL database makes: a `mode=ro` connection would
    leave them behind."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=OPEN_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise EmbedpipeError(f"embedding cache {path}: cannot open ({exc})") from exc
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "embeddings" not in tables:
            return []  # created but never written to
        rows = db.execute(SUMMARY_SQL).fetchall()
    except sqlite3.Error as exc:
        raise EmbedpipeError(f"embedding cache {path}: read failed ({exc})") from exc
    finally:
        db.close()
    return [CacheGroup(m, int(d), int(n), int(b or 0)) for m, d, n, b in rows]


MIN_PREFIX = 4
HEX = frozenset("0123456789abcdefABCDEF")
MODEL_VALUE_HELP = (
    f"--model takes a registered model name, a GGUF file or a hex SHA-256 prefix of at least {MIN_PREFIX} "
    "characters (see `embedpipe cache info`)"
)


def model_prefix(value: str) -> str:
    """A SHA-256 prefix naming a model's entries for `clear`: at least 4 hex digits, lower-cased
    (a shorter one would match models by accident). ValueError otherwise."""
    if len(value) < MIN_PREFIX or any(c not in HEX for c in value):
        raise ValueError(MODEL_VALUE_HELP)
    return value.lower()


@dataclass(frozen=True)
class ModelSelector:
    """One model, as `cache clear -m` names it: the SHA-256 (or a prefix of it) its cached
    embeddings are keyed by, and its GGUF file when named by path or registered name."""

    sha256_prefix: str
    path: Path | None = None


def select_model(value: str) -> ModelSelector:
    """A `-m` value for the cache: like every other command's `-m`, a GGUF file or a registered
    model name (`name` or `name:quant`), resolved to the file's SHA-256 (never downloads); or,
    as `cache info` shows models, a SHA-256 prefix (a value of hex digits only). ValueError
    for a value that is none of these (a usage error), EmbedpipeError for a named model that
    cannot be resolved here."""
    text = value.strip()
    if text and all(c in HEX for c in text):
        return ModelSelector(model_prefix(text))
    from embedpipe.runtime import registry, store
    from embedpipe.runtime.gguf_file import file_sha256

    path = Path(text).expanduser()
    if not path.is_file():
        named = registry.split_name(text)
        if named is not None:
            name, quant = named
            cached = store.cached_model_path(quant, registry.lookup(name).spec)
            if cached is None:
                raise EmbedpipeError(
                    f"model {name}:{quant} is not downloaded, so its SHA-256 is unknown here; pass the SHA-256 "
                    "prefix that `embedpipe cache info` shows"
                )
            path = cached
        elif path.is_dir():
            raise ModelFileError(f"{text}: is a directory, not a GGUF file")
        elif path.suffix.lower() == ".gguf" or os.sep in text:
            raise ModelFileError(f"{text}: no such model file")
        else:
            raise ValueError(MODEL_VALUE_HELP)
    try:
        return ModelSelector(file_sha256(path), path.resolve())
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of the cache file at `path`, its write-ahead log included."""
    return sum(p.stat().st_size for p in (Path(path), Path(f"{path}-wal")) if p.exists())
