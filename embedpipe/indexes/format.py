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

from embedpipe.errors import EmbedpipeError, quote
from embedpipe.indexes.quant import STORAGE_TYPES

MAGIC = b"EMBPIDX\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIII")
_ALIGN = 64
_CRC_CHUNK = 1 << 24
# Section dtypes a reader accepts: fixed-size little-endian numbers only (no objects, strings
# or big-endian views that the kernels would misread).
SECTION_DTYPES = frozenset({"<f4", "<f8", "|i1", "|u1", "<i2", "<i4", "<i8", "<u4", "<u8"})
MAX_COUNT = 1 << 40
MAX_DIM = 1 << 16


class Field:
    """One header field: accepted Python types, whether it must be present, and bounds."""

    def __init__(
        self,
        *types: type,
        required: bool = False,
        lo: int | None = None,
        hi: int | None = None,
        choices: tuple | None = None,
    ) -> None:
        self.types, self.required, self.lo, self.hi, self.choices = types, required, lo, hi, choices

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            return f"is {type(value).__name__}, expected {'/'.join(t.__name__ for t in self.types)}"
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            return f"is {value}, outside [{self.lo}, {self.hi}]"
        if self.choices is not None and value not in self.choices:
            return f"is {quote(value)}, expected one of {self.choices}"
        return None


_U32 = dict(lo=0, hi=(1 << 32) - 1)
_OFFSET = dict(lo=0, hi=1 << 62)

# Every header field a reader follows, in one table: the container's own fields (every file),
# the fields every index type shares (checked when a loader opens its type), per-type
# top-level fields and each index type's params.
CONTAINER_SCHEMA: dict[str, Field] = {
    "type": Field(str),
    "sections": Field(dict, required=True),
    "payload_offset": Field(int, required=True, **_OFFSET),
    "payload_size": Field(int, required=True, **_OFFSET),
    "payload_crc32": Field(int, required=True, **_U32),
}
INDEX_SCHEMA: dict[str, Field] = {
    "type": Field(str, required=True),
    "dim": Field(int, required=True, lo=1, hi=MAX_DIM),
    "quant": Field(str, required=True, choices=tuple(STORAGE_TYPES)),
    "count": Field(int, required=True, lo=0, hi=MAX_COUNT),
    "metric": Field(str),
    "id_kind": Field(str, required=True, choices=("int", "str")),
    "columns": Field(list, required=True),
    "source_dim": Field(int, lo=0, hi=MAX_DIM),
    "model_sha256": Field(str),
    "model_path": Field(str),
    "task": Field(str),
    "extra": Field(dict),
    "params": Field(dict),
    "ann_file": Field(str),
}
TYPE_SCHEMA: dict[str, dict[str, Field]] = {
    "annoy": {"ann_size": Field(int, required=True, **_OFFSET), "ann_crc32": Field(int, required=True, **_U32)},
}
PARAMS_SCHEMA: dict[str, dict[str, Field]] = {
    "brute": {"scale_mode": Field(str, required=True, choices=("vector", "dim"))},
    "annoy": {"n_trees": Field(int, lo=0, hi=1 << 20), "search_k": Field(int, lo=-1, hi=1 << 40)},
    "hnsw": {
        "m": Field(int, required=True, lo=2, hi=1 << 12),  # levels are drawn with 1/ln(m)
        "ef_search": Field(int, required=True, lo=1, hi=1 << 20),
        "ef_construction": Field(int, lo=1, hi=1 << 20),
        "max_level": Field(int, lo=0, hi=127),
        "seed": Field(int),
        "scale_mode": Field(str, choices=("vector", "dim")),
        "entry": Field(int, required=True, lo=0, hi=MAX_COUNT),
    },
}
SECTION_SCHEMA: dict[str, Field] = {
    "offset": Field(int, required=True, **_OFFSET),
    "nbytes": Field(int, required=True, **_OFFSET),
    "dtype": Field(str, required=True, choices=tuple(sorted(SECTION_DTYPES))),
    "shape": Field(list, required=True),
}


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    if path.is_dir():
        raise IndexFileError(path, f"is a directory; an index is one file, e.g. {path / 'index.idx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; other outputs follow the umask
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_container(path: str | os.PathLike, header: Mapping[str, Any], sections: Mapping[str, np.ndarray]) -> None:
    """Write `header` (JSON-able) and the arrays in `sections` atomically to `path`."""
    arrays = {name: np.ascontiguousarray(arr) for name, arr in sections.items()}
    # Offsets depend on the header length, which depends on the offsets: iterate to a fixpoint.
    header_len = 0
    while True:
        offset = _aligned(_PREFIX.size + header_len)
        table: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            table[name] = {
                "offset": offset,
                "nbytes": int(arr.nbytes),
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
            }
            offset = _aligned(offset + arr.nbytes)
        payload_start = _aligned(_PREFIX.size + header_len)
        crc = 0
        pos = payload_start
        for name, arr in arrays.items():
            pad = table[name]["offset"] - pos
            crc = crc32_of(b"\0" * pad, crc)
            crc = crc32_of(arr.reshape(-1).view(np.uint8), crc)
            pos = table[name]["offset"] + arr.nbytes
        full = dict(
            header, sections=table, payload_offset=payload_start, payload_size=pos - payload_start, payload_crc32=crc
        )
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


def check_fields(path: Any, what: str, values: Any, schema: Mapping[str, Field]) -> None:
    """Raise IndexFileError unless `values` is a dict whose fields match `schema`."""
    if not isinstance(values, dict):
        raise IndexFileError(
            path, f"corrupt header: {what} is {type(values).__name__}, expected an object; rebuild the index"
        )
    for name, spec in schema.items():
        if name not in values:
            if spec.required:
                raise IndexFileError(path, f"corrupt header: {what} lacks {name!r}; rebuild the index")
            continue
        problem = spec.problem(values[name])
        if problem:
            raise IndexFileError(path, f"corrupt header: {what} field {name!r} {problem}; rebuild the index")


def check_header(path: Any, header: Any) -> None:
    """Type-check an index header against INDEX_SCHEMA and the tables of its type."""
    check_fields(path, "header", header, INDEX_SCHEMA)
    if not all(isinstance(c, str) for c in header["columns"]):
        raise IndexFileError(path, "corrupt header: 'columns' must be a list of names; rebuild the index")
    check_fields(path, f"{quote(header['type'])} header", header, TYPE_SCHEMA.get(header["type"], {}))
    params = PARAMS_SCHEMA.get(header["type"])
    if params is not None:
        check_fields(path, f"{header['type']} params", header.get("params", {}), params)


def _section_views(path: Path, buf: Any, header: dict[str, Any]) -> dict[str, np.ndarray]:
    """Numpy views of the sections after checking each one's offset, size, dtype and shape
    against each other and against the payload bounds (so no view can reach past the file)."""
    lo = header["payload_offset"]
    hi = lo + header["payload_size"]
    whole = np.frombuffer(buf, dtype=np.uint8) if len(buf) else np.zeros(0, np.uint8)
    sections: dict[str, np.ndarray] = {}
    for name, info in header["sections"].items():
        what = f"section {quote(name)}"
        check_fields(path, what, info, SECTION_SCHEMA)
        dtype, shape = np.dtype(info["dtype"]), info["shape"]
        if (
            not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_COUNT for d in shape)
            or len(shape) > 4
        ):
            raise IndexFileError(path, f"corrupt header: {what} has shape {quote(shape)}; rebuild the index")
        start, nbytes = info["offset"], info["nbytes"]
        if nbytes != int(np.prod(shape, dtype=object)) * dtype.itemsize:
            raise IndexFileError(
                path,
                f"corrupt header: {what} holds {nbytes} bytes, but shape "
                f"{shape} of {dtype.str} needs "
                f"{int(np.prod(shape, dtype=object)) * dtype.itemsize}; rebuild the index",
            )
        if start < lo or start + nbytes > hi or start % dtype.itemsize:
            raise IndexFileError(
                path,
                f"corrupt header: {what} at bytes {start}..{start + nbytes} "
                f"lies outside the payload {lo}..{hi} or is misaligned; "
                "rebuild the index",
            )
        sections[name] = whole[start : start + nbytes].view(dtype).reshape(shape)
    return sections


def is_container(path: str | os.PathLike) -> bool:
    """True when `path` starts with the embedpipe index magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_container(
    path: str | os.PathLike, expected_type: str | None = None, verify: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open `path`; return (header, sections as read-only numpy views on an mmap).

    Raises IndexFileError naming the file and the problem: bad magic, unsupported version,
    truncated file, header or payload checksum mismatch, or an index of another type.
    """
    path = Path(path)
    buf = _open_map(path)
    if len(buf) < _PREFIX.size:
        raise IndexFileError(path, f"truncated: {len(buf)} bytes is shorter than the header; rebuild the index")
    magic, version, header_len, header_crc, _ = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise IndexFileError(path, f"not an embedpipe index (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise IndexFileError(
            path,
            f"index format version {version} is not supported "
            f"(this embedpipe reads version {FORMAT_VERSION}); rebuild it",
        )
    end = _PREFIX.size + header_len
    if len(buf) < end:
        raise IndexFileError(path, f"truncated: header needs {end} bytes, file has {len(buf)}; rebuild the index")
    blob = bytes(buf[_PREFIX.size : end])
    if zlib.crc32(blob) != header_crc:
        raise IndexFileError(path, "header checksum mismatch: the file is corrupt; rebuild the index")
    try:
        header = json.loads(blob)
    except (ValueError, RecursionError) as exc:
        raise IndexFileError(path, f"unreadable header ({quote(str(exc), 80)}); rebuild the index") from None
    check_fields(path, "header", header, CONTAINER_SCHEMA)
    if expected_type is not None:
        if header.get("type") != expected_type:
            raise IndexFileError(path, f"is a {quote(header.get('type'))} index, expected {expected_type!r}")
        check_header(path, header)
    payload_end = header["payload_offset"] + header["payload_size"]
    if len(buf) < payload_end:
        raise IndexFileError(
            path, f"truncated: payload needs {payload_end} bytes, file has {len(buf)}; rebuild the index"
        )
    if header["payload_offset"] < end:
        raise IndexFileError(path, "corrupt header: the payload overlaps the header; rebuild the index")
    if verify:
        got = crc32_of(memoryview(buf)[header["payload_offset"] : payload_end])
        if got != header["payload_crc32"]:
            raise IndexFileError(
                path,
                "payload checksum mismatch: the file is corrupt "
                f"(crc32 {got:08x}, header says "
                f"{header['payload_crc32']:08x}); rebuild the index",
            )
    sections = _section_views(path, buf, header)
    header.pop("sections")
    return header, sections
