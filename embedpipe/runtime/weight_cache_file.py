"""The file format of the repacked-weight cache (``weight_cache``): writing, reading and mapping.

Layout: ``MAGIC`` | u64 header length | u32 CRC-32 of the header | JSON header | zero padding to
``DATA_ALIGN`` | arrays, each at a ``ARRAY_ALIGN``-aligned offset, zero-padded.

The header holds the cache's stamp (which model file and packing the arrays belong to), the
model's sampled fingerprint, the file's size, where the data starts, and per weight its kernel
family and arrays (offset, bytes, dtype, shape and checksum: the wrapping 64-bit sum of the
array's words, checked when it is mapped, so any changed word in the file is caught, as is
truncation).  Files are written to a temporary name, synced and renamed.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"EPWCACHE"
ARRAY_ALIGN = 64
DATA_ALIGN = 4096
_PREFIX = struct.Struct("<8sQI")
MAX_HEADER_BYTES = 64 << 20


def checksum(data: np.ndarray) -> int:
    """Wrapping sum of the 64-bit words of ``data`` (a uint8 view whose length is a multiple
    of 8): every changed word changes it; about memory speed."""
    return int(np.add.reduce(data.view(np.uint64), dtype=np.uint64))


def _checksumpadded(flat: np.ndarray) -> int:
    """``checksum`` of ``flat`` (uint8) zero-padded to whole words, without copying it."""
    whole = flat.nbytes // 8 * 8
    total = checksum(flat[:whole])
    if whole < flat.nbytes:
        tail = np.zeros(8, np.uint8)
        tail[: flat.nbytes - whole] = flat[whole:]
        total = (total + checksum(tail)) % (1 << 64)
    return total


def padded(nbytes: int, align: int = 8) -> int:
    return -(-nbytes // align) * align


@dataclass(frozen=True)
class CachedArrays:
    """What a backend stored for one weight: its kernel family and packed arrays."""

    family: str
    arrays: tuple[np.ndarray, ...]


def map_file(path: Path) -> np.ndarray:
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
        if length > MAX_HEADER_BYTES:
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
                    "sum": _checksumpadded(flat),
                }
            )
            layout.append((offset, flat))
            offset = padded(offset + flat.nbytes, ARRAY_ALIGN)
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
    data_start = padded(_PREFIX.size + len(body) + room, DATA_ALIGN)
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
