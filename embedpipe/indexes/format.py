"""The embedpipe index container: one file, a checked header, aligned sections, loaded by mmap.

Layout::

    prefix   24 B  magic b"EMBPIDX\\0", u32 format version, u32 header length,
                   u32 CRC-32 of the header bytes, u32 reserved
    header   JSON (UTF-8): index type, dim, quant, count, metric, model SHA-256, task, ...
             plus "sections" {name: {offset, nbytes, dtype, shape}} and the payload CRC-32
    payload  sections, each starting at a 64-byte aligned offset from the start of the file

Sections are returned as numpy views on a read-only memory map (zero copy), so opening a large
brute index costs no more than the checksum pass (`verify=False` skips even that).
Everything is written to a temporary file in the target directory and renamed into place, so a
crashed build never leaves a half-written index under the final name.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError

MAGIC = b"EMBPIDX\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIII")
_ALIGN = 64
_CRC_CHUNK = 1 << 24


class IndexFileError(EmbedpipeError):
    """An index file is missing, truncated, corrupt, of another version or of the wrong kind."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class DimensionMismatchError(EmbedpipeError):
    """Query vectors do not have the dimension the index was built with."""


def crc32_of(buf: Any, crc: int = 0) -> int:
    """CRC-32 of a bytes-like object, fed to zlib in chunks (bounded temporaries)."""
    view = memoryview(buf).cast("B")
    for start in range(0, len(view), _CRC_CHUNK):
        crc = zlib.crc32(view[start : start + _CRC_CHUNK], crc)
    return crc


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_container(path: str | os.PathLike, header: Mapping[str, Any],
                    sections: Mapping[str, np.ndarray]) -> None:
    """Write `header` (JSON-able) and the arrays in `sections` atomically to `path`."""
    arrays = {name: np.ascontiguousarray(arr) for name, arr in sections.items()}
    # Offsets depend on the header length, which depends on the offsets: iterate to a fixpoint.
    header_len = 0
    while True:
        offset = _aligned(_PREFIX.size + header_len)
        table: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            table[name] = {"offset": offset, "nbytes": int(arr.nbytes),
                           "dtype": arr.dtype.str, "shape": list(arr.shape)}
            offset = _aligned(offset + arr.nbytes)
        payload_start = _aligned(_PREFIX.size + header_len)
        crc = 0
        pos = payload_start
        for name, arr in arrays.items():
            pad = table[name]["offset"] - pos
            crc = crc32_of(b"\0" * pad, crc)
            crc = crc32_of(arr.reshape(-1).view(np.uint8), crc)
            pos = table[name]["offset"] + arr.nbytes
        full = dict(header, sections=table, payload_offset=payload_start,
                    payload_size=pos - payload_start, payload_crc32=crc)
        blob = json.dumps(full, sort_keys=True).encode()
        if len(blob) == header_len:
            break
        header_len = len(blob)

    def write(fh: Any) -> None:
        fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(blob), zlib.crc32(blob), 0))
        fh.write(blob)
        pos = _PREFIX.size + len(blob)
        for name, arr in arrays.items():
            fh.write(b"\0" * (table[name]["offset"] - pos))
            fh.write(memoryview(arr.reshape(-1).view(np.uint8)))
            pos = table[name]["offset"] + arr.nbytes

    atomic_write(path, write)


def _open_map(path: Path) -> mmap.mmap | bytes:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return b""
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise IndexFileError(path, "no such index file") from None
    except IsADirectoryError:
        raise IndexFileError(path, "is a directory, not an index file") from None


def is_container(path: str | os.PathLike) -> bool:
    """True when `path` starts with the embedpipe index magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_container(path: str | os.PathLike, expected_type: str | None = None,
                   verify: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open `path`; return (header, sections as read-only numpy views on an mmap).

    Raises IndexFileError naming the file and the problem: bad magic, unsupported version,
    truncated file, header or payload checksum mismatch, or an index of another type.
    """
    path = Path(path)
    buf = _open_map(path)
    if len(buf) < _PREFIX.size:
        raise IndexFileError(path, f"truncated: {len(buf)} bytes is shorter than the header")
    magic, version, header_len, header_crc, _ = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise IndexFileError(path, f"not an embedpipe index (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise IndexFileError(path, f"index format version {version} is not supported "
                                   f"(this embedpipe reads version {FORMAT_VERSION}); rebuild it")
    end = _PREFIX.size + header_len
    if len(buf) < end:
        raise IndexFileError(path, f"truncated: header needs {end} bytes, file has {len(buf)}")
    blob = bytes(buf[_PREFIX.size:end])
    if zlib.crc32(blob) != header_crc:
        raise IndexFileError(path, "header checksum mismatch: the file is corrupt")
    try:
        header = json.loads(blob)
    except ValueError as exc:
        raise IndexFileError(path, f"unreadable header: {exc}") from None
    if expected_type is not None and header.get("type") != expected_type:
        raise IndexFileError(path, f"is a {header.get('type')!r} index, expected {expected_type!r}")
    payload_end = header["payload_offset"] + header["payload_size"]
    if len(buf) < payload_end:
        raise IndexFileError(path, f"truncated: payload needs {payload_end} bytes, "
                                   f"file has {len(buf)}")
    if verify:
        got = crc32_of(memoryview(buf)[header["payload_offset"]:payload_end])
        if got != header["payload_crc32"]:
            raise IndexFileError(path, "payload checksum mismatch: the file is corrupt "
                                       f"(crc32 {got:08x}, header says "
                                       f"{header['payload_crc32']:08x})")
    whole = np.frombuffer(buf, dtype=np.uint8)
    sections: dict[str, np.ndarray] = {}
    for name, info in header.pop("sections").items():
        raw = whole[info["offset"]:info["offset"] + info["nbytes"]]
        sections[name] = raw.view(np.dtype(info["dtype"])).reshape(info["shape"])
    return header, sections
