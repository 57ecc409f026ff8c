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

The file format (layout, checksums, atomic writes) is ``weight_cache_file``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.runtime import cache_root, model_integrity
from embedpipe.runtime.weight_cache_file import (
    FORMAT_VERSION,
    CachedArrays,
    checksum,
    map_file,
    padded,
    read_header,
    write_file,
)

log = logging.getLogger(__name__)

SUFFIX = ".weights"
ENABLE_ENV = "EMBEDPIPE_WEIGHT_CACHE"  # "0" turns the cache off
MAX_BYTES_ENV = "EMBEDPIPE_WEIGHT_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
STALE_TMP_SECONDS = 3600


DIR_ENV = cache_root.WEIGHTS_ENV


def weights_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """``weights/`` in the cache root ``root`` (a ``--cache-dir``); without one
    $EMBEDPIPE_WEIGHT_CACHE_DIR, else ``weights/`` in the embedpipe cache directory."""
    return cache_root.weights_dir(root)


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def max_bytes() -> int:
    try:
        return int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    except ValueError:
        log.warning("%s is not an integer; using %d", MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES


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
            data = map_file(self.path)
            for entry in entries.values():
                for a in entry["arrays"]:
                    if not (data_start <= a["offset"] and a["offset"] + padded(a["nbytes"]) <= size):
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
                region = data[a["offset"] : a["offset"] + padded(a["nbytes"])]
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
