"""On-disk cache of repacked weights, memory-mapped on load (``<cache>/weights/*.weights``).

A backend repacks every weight of a model into its kernels' layout when the model loads. The
result depends only on the model file's bytes and the packing (ISA, tiles, layout version), so
it is written once and later loads map it read-only instead of repacking: nothing is copied,
and the pages are shared with the page cache instead of sitting beside a second copy.

A cache file belongs to one model file and one packing identity, and can never serve another:

* its name hashes the model's resolved path and the backend's packing identity (which carries
  ``codegen.library.PACKED_LAYOUT_VERSION`` and the ISA) together with the model's size, mtime,
  inode and ctime, so an edited or replaced model looks up a different name (and the stale file
  of the same model is deleted when the new one is written). The ctime is what makes this safe
  without reading the model: any write to the file sets it, and unlike the mtime it cannot be
  put back, so even a one-byte same-size edit with the mtime restored misses the cache;
* its header records the model's sampled integrity fingerprint taken when the cache was written
  (``model_integrity.fingerprint_digest``: one CRC-32 per tensor over 64 bytes of every 8 KiB),
  compared on load when this process has the fingerprint anyway (a model pulled with an
  integrity sidecar is fingerprinted when opened); it is not computed just for the cache, which
  would touch every page of the model on every start;
* every array carries a checksum (wrapping 64-bit sum of its words) checked when it is mapped:
  any change of a word in the cache file itself is caught, as is truncation.

Anything that does not match is logged as a warning and rebuilt; a cache that cannot be written
(read-only disk) only costs the repack. Files are written to a temporary name and renamed, and
the directory is kept under ``$EMBEDPIPE_WEIGHT_CACHE_MAX_BYTES`` (least recently used go first).

Layout: ``MAGIC`` | u64 header length | u32 CRC-32 of the header | JSON header | zero padding to
``DATA_ALIGN`` | arrays, each at a ``ARRAY_ALIGN``-aligned offset, zero-padded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.runtime import model_integrity
from embedpipe.runtime.cache_root import cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"EPWCACHE"
SUFFIX = ".weights"
ARRAY_ALIGN = 64
DATA_ALIGN = 4096
ENABLE_ENV = "EMBEDPIPE_WEIGHT_CACHE"  # "0" turns the cache off
MAX_BYTES_ENV = "EMBEDPIPE_WEIGHT_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
_PREFIX = struct.Struct("<8sQI")
STALE_TMP_SECONDS = 3600


DIR_ENV = "EMBEDPIPE_WEIGHT_CACHE_DIR"


def weights_dir() -> Path:
    """$EMBEDPIPE_WEIGHT_CACHE_DIR, else ``weights/`` in the embedpipe cache directory."""
    env = os.environ.get(DIR_ENV)
    return Path(env).expanduser() if env else cache_dir() / "weights"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def max_bytes() -> int:
    try:
        return int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    except ValueError:
        log.warning("%s is not an integer; using %d", MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES


def checksum(data: np.ndarray) -> int:
    """Wrapping sum of the 64-bit words of ``data`` (a uint8 view whose length is a multiple
    of 8): every changed word changes it; about memory speed."""
    return int(np.add.reduce(data.view(np.uint64), dtype=np.uint64))


def _checksum_padded(flat: np.ndarray) -> int:
    """``checksum`` of ``flat`` (uint8) zero-padded to whole words, without copying it."""
    whole = flat.nbytes // 8 * 8
    total = checksum(flat[:whole])
    if whole < flat.nbytes:
        tail = np.zeros(8, np.uint8)
        tail[: flat.nbytes - whole] = flat[whole:]
        total = (total + checksum(tail)) % (1 << 64)
    return total


def _padded(nbytes: int, align: int = 8) -> int:
    return -(-nbytes // align) * align


@dataclass(frozen=True)
class CachedArrays:
    """What a backend stored for one weight: its kernel family and packed arrays."""

    family: str
    arrays: tuple[np.ndarray, ...]


class WeightCache:
    """The repacked weights of one model file for one packing identity.

    ``get`` serves a weight from the mapped file (or None), ``put`` records a freshly packed
    one, ``commit`` writes the file when anything was missing or damaged. Thread-safe: models
    prepare their layers on a thread pool.
    """

    def __init__(self, model_file: Any, identity: str, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else weights_dir()
        self._model_file = model_file
        path = Path(model_file.path).resolve()
        st = path.stat()
        self.stamp = {
            "format": FORMAT_VERSION,
            "identity": identity,
            "model": str(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino,
            "ctime_ns": st.st_ctime_ns,
        }
        owner = hashlib.sha256(f"{FORMAT_VERSION}:{identity}:{path}".encode()).hexdigest()[:16]
        version = hashlib.sha256(json.dumps(self.stamp, sort_keys=True).encode()).hexdigest()[:16]
        self.owner_prefix = owner
        self.path = self.directory / f"{owner}-{version}{SUFFIX}"
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._data: np.ndarray | None = None
        self._kept: dict[str, tuple[str, tuple[int, ...], CachedArrays]] = {}
        self._dirty = False
        self.hits = 0
        self._open()

    # ------------------------------------------------------------------ reading

    def _open(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return  # not cached yet
        try:
            header, data_start = read_header(self.path)
            if header.get("stamp") != self.stamp:
                raise ValueError("it was written for another model file or packing")
            if header.get("file_bytes") != size:
                raise ValueError(f"it has {size} bytes, its header says {header.get('file_bytes')}")
            known = model_integrity.known_fingerprint_digest(self._model_file)
            if known is not None and header.get("fingerprint") != known:
                log.warning(
                    "%s changed since its repacked weights were cached (same size and mtime, other bytes); rebuilding",
                    self._model_file.path,
                )
                return
            entries = header["entries"]
            if not isinstance(entries, dict):
                raise ValueError("its entry table is not a mapping")
            data = _map(self.path)
            for entry in entries.values():
                for a in entry["arrays"]:
                    if not (data_start <= a["offset"] and a["offset"] + _padded(a["nbytes"]) <= size):
                        raise ValueError("an array lies outside the file")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._damaged(str(exc))
            return
        self._entries, self._data = entries, data
        try:
            os.utime(self.path)  # recency for the size bound
        except OSError:
            pass

    def _damaged(self, why: str) -> None:
        log.warning("weight cache %s is damaged (%s); rebuilding it", self.path, why)
        self._entries, self._data, self._dirty = {}, None, True

    @staticmethod
    def _key(name: str, qtype: int, shape: tuple[int, ...]) -> str:
        return f"{name}|{int(qtype)}|{'x'.join(str(int(d)) for d in shape)}"

    def get(self, name: str, qtype: int, shape: tuple[int, ...]) -> CachedArrays | None:
        """The cached arrays of one weight, checksum-verified, or None (then ``put`` it)."""
        key = self._key(name, qtype, shape)
        entry = self._entries.get(key)
        data = self._data
        if entry is None or data is None:
            with self._lock:
                self._dirty = True
            return None
        try:
            arrays = []
            for a in entry["arrays"]:
                region = data[a["offset"] : a["offset"] + _padded(a["nbytes"])]
                if checksum(region) != int(a["sum"]):
                    raise ValueError(f"the bytes of {name} do not match their checksum")
                view = region[: a["nbytes"]].view(np.dtype(a["dtype"])).reshape(a["shape"])
                arrays.append(view)
            cached = CachedArrays(str(entry["family"]), tuple(arrays))
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self._damaged(str(exc))
            return None
        with self._lock:
            self._kept[key] = (name, tuple(shape), cached)
            self.hits += 1
        return cached

    def put(self, name: str, qtype: int, shape: tuple[int, ...], cached: CachedArrays) -> None:
        with self._lock:
            self._kept[self._key(name, qtype, shape)] = (name, tuple(shape), cached)
            self._dirty = True

    # ------------------------------------------------------------------ writing

    def commit(self) -> Path | None:
        """Write the file if a weight was missing or damaged; returns the path written."""
        with self._lock:
            if not self._dirty or not self._kept:
                return None
            kept = dict(self._kept)
            self._dirty = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_file(self.path, self.stamp, model_integrity.fingerprint_digest(self._model_file), kept)
        except OSError as exc:  # a read-only cache only costs the repack next time
            log.info("weight cache %s not written: %s", self.path, exc)
            return None
        for other in self.directory.glob(f"{self.owner_prefix}-*{SUFFIX}"):
            if other != self.path:  # the same model file's older version: never valid again
                other.unlink(missing_ok=True)
        prune(self.directory, max_bytes(), keep=self.path)
        return self.path


def _map(path: Path) -> np.ndarray:
    """The file as a read-only uint8 array over a shared mapping.

    The mapping asks for transparent huge pages: pages this mapping reads in are cached as
    2 MiB folios and mapped whole, so the kernels, which stream every weight once per forward
    pass, take one TLB entry per 2 MiB instead of a page walk per 4 KiB.  A kernel or file
    system without them ignores the hint; pages already cached in small folios stay so."""
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            mapped.madvise(advice)
        except OSError as exc:
            log.debug("weight cache %s: no huge-page hint (%s)", path, exc)
    return np.frombuffer(mapped, dtype=np.uint8)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a cache file and where its data starts (ValueError when malformed)."""
    with open(path, "rb") as fh:
        prefix = fh.read(_PREFIX.size)
        if len(prefix) != _PREFIX.size:
            raise ValueError("it is shorter than its header")
        magic, length, crc = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ValueError("wrong magic")
        if length > 64 << 20:
            raise ValueError("implausible header length")
        raw = fh.read(length)
    if len(raw) != length or zlib.crc32(raw) != crc:
        raise ValueError("its header is truncated or corrupt")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("its header is not a mapping")
    data_start = header.get("data_start")
    if not isinstance(data_start, int) or data_start < _PREFIX.size + length or data_start % DATA_ALIGN:
        raise ValueError("its data offset is invalid")
    return header, data_start


def write_file(
    path: Path, stamp: dict[str, Any], fingerprint: str, kept: dict[str, tuple[str, tuple[int, ...], CachedArrays]]
) -> None:
    """Write a cache file atomically (temporary name, fsync, rename)."""
    entries: dict[str, Any] = {}
    layout: list[tuple[int, np.ndarray]] = []
    offset = 0
    for key, (_name, _shape, cached) in sorted(kept.items()):
        described = []
        for arr in cached.arrays:
            arr = np.ascontiguousarray(arr)
            flat = arr.reshape(-1).view(np.uint8)
            described.append(
                {
                    "offset": offset,
                    "nbytes": int(flat.nbytes),
                    "dtype": arr.dtype.str,
                    "shape": list(arr.shape),
                    "sum": _checksum_padded(flat),
                }
            )
            layout.append((offset, flat))
            offset = _padded(offset + flat.nbytes, ARRAY_ALIGN)
        entries[key] = {"family": cached.family, "arrays": described}
    header: dict[str, Any] = {
        "stamp": stamp,
        "fingerprint": fingerprint,
        "entries": entries,
        "file_bytes": 0,
        "data_start": 0,
    }
    # Offsets are relative until the header's size is known, and that size depends on the
    # offsets' digits: reserve room for the digits the shift can add, then shift once.
    body = json.dumps(header).encode()
    room = 64 + 24 * sum(len(e["arrays"]) for e in entries.values())
    data_start = _padded(_PREFIX.size + len(body) + room, DATA_ALIGN)
    for e in entries.values():
        for a in e["arrays"]:
            a["offset"] += data_start
    header["file_bytes"], header["data_start"] = data_start + offset, data_start
    body = json.dumps(header).encode()
    if _PREFIX.size + len(body) > data_start:
        raise OSError("weight cache header outgrew its reserved space")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, len(body), zlib.crc32(body)))
            fh.write(body)
            fh.write(b"\0" * (data_start - _PREFIX.size - len(body)))
            pos = data_start
            for rel, flat in layout:  # written from the arrays themselves: no copy of the weights
                if data_start + rel > pos:
                    fh.write(b"\0" * (data_start + rel - pos))
                fh.write(memoryview(flat))
                pos = data_start + rel + flat.nbytes
            if header["file_bytes"] > pos:
                fh.write(b"\0" * (header["file_bytes"] - pos))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class CacheFileInfo:
    path: Path
    bytes: int
    model: str
    identity: str
    last_used: float


def list_files(directory: Path | None = None) -> list[CacheFileInfo]:
    """Every cache file (most recently used first) with the model it was made from."""
    directory = Path(directory) if directory is not None else weights_dir()
    out = []
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            st = path.stat()
            header, _ = read_header(path)
            stamp = header.get("stamp", {})
            model, identity = str(stamp.get("model", "?")), str(stamp.get("identity", "?"))
        except (OSError, ValueError):
            model, identity = "(damaged)", "?"
            try:
                st = path.stat()
            except OSError:
                continue
        out.append(CacheFileInfo(path, st.st_size, model, identity, st.st_mtime))
    return sorted(out, key=lambda f: -f.last_used)


def clear(directory: Path | None = None) -> tuple[int, int]:
    """Delete every cache file; returns (files, bytes) removed."""
    files = list_files(directory)
    for f in files:
        f.path.unlink(missing_ok=True)
    return len(files), sum(f.bytes for f in files)


def prune(directory: Path, limit: int, keep: Path | None = None) -> None:
    """Delete least recently used files until the directory holds at most ``limit`` bytes
    (never ``keep``), and temporary files left by writers that died."""
    now = time.time()
    for tmp in directory.glob(f"*{SUFFIX}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
    total = 0
    for f in list_files(directory):
        total += f.bytes
        if total > limit and f.path != keep:
            f.path.unlink(missing_ok=True)
            total -= f.bytes
