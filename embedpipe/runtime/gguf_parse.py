"""A fast GGUF header parser over an mmap.

gguf-py's `GGUFReader` builds a numpy view for every array element; on EmbeddingGemma's
262 144-token vocabulary that takes tens of seconds. This reads the same header (format per
ggml's gguf.md, versions 2 and 3, little-endian) with one pass of `struct` and numpy
`frombuffer`, and leaves tensor data in the mmap.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from embedpipe.errors import quote, shown

DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2  # arrays of arrays appear in no model we read; deeper is a crafted file

# GGUF value type id -> (struct format, numpy dtype) for fixed-size scalars.
_SCALARS: dict[int, tuple[str, np.dtype]] = {
    0: ("<B", np.dtype("<u1")),
    1: ("<b", np.dtype("<i1")),
    2: ("<H", np.dtype("<u2")),
    3: ("<h", np.dtype("<i2")),
    4: ("<I", np.dtype("<u4")),
    5: ("<i", np.dtype("<i4")),
    6: ("<f", np.dtype("<f4")),
    7: ("<?", np.dtype("?")),
    10: ("<Q", np.dtype("<u8")),
    11: ("<q", np.dtype("<i8")),
    12: ("<d", np.dtype("<f8")),
}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes do not follow the GGUF layout (message says where)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    dims: tuple[int, ...]  # ggml order (fastest-varying first)
    offset: int  # from the start of the data section


class StringIndex:
    """Remembered item offsets of a file's string arrays (header position -> starts), so that a
    warm open need not walk 262 144 length prefixes in Python. Whatever is remembered is checked
    against the file before use (``_checked_starts``), so a stale entry costs only the walk."""

    def get(self, pos: int, count: int) -> np.ndarray | None:
        return None

    def put(self, pos: int, count: int, starts: np.ndarray) -> None:
        pass


def _checked_starts(buf: memoryview, pos: int, count: int, starts: np.ndarray | None) -> np.ndarray | None:
    """``starts`` when they are exactly the item offsets of the string array whose count field
    ends at ``pos``: each item's u64 length prefix sits right before it and the next item
    follows right after it, inside the file. Vectorized: a few milliseconds for 262 144 items."""
    size = len(buf)
    if starts is None or starts.dtype != np.int64 or starts.shape != (count,) or count == 0 or size < 8:
        return None
    if starts[0] != pos + 8 or starts.min() < 8 or starts.max() > size:
        return None
    every_u64 = np.ndarray((size - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    lengths = every_u64[starts - 8]
    if (lengths > size).any():
        return None
    ends = starts + lengths.astype(np.int64)
    if ends[-1] > size or (ends[:-1] + 8 != starts[1:]).any():
        return None
    return starts


class _Cursor:
    def __init__(self, buf: memoryview, index: StringIndex | None = None):
        self.buf = buf
        self.pos = 0
        self.index = index or StringIndex()

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise GGUFFormatError(
                f"header runs past the end of the file at byte {self.pos} "
                f"(a field claims {n} bytes, {self.remaining()} remain)"
            )
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return bytes(self.take(self.scalar("<Q")))

    def value(self, type_id: int, depth: int = 0) -> Any:
        if type_id in _SCALARS:
            return self.scalar(_SCALARS[type_id][0])
        if type_id == _STRING:
            return self.string().decode("utf-8", errors="replace")
        if type_id == _ARRAY and depth < MAX_ARRAY_DEPTH:
            return self.array(depth + 1)
        raise GGUFFormatError(f"unsupported metadata value type {type_id} at byte {self.pos}")

    def array(self, depth: int = 1) -> Any:
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        # every item takes at least one byte (a string at least its 8-byte length): a count
        # beyond the bytes left is corrupt, whatever the item type
        smallest = _SCALARS[item_type][1].itemsize if item_type in _SCALARS else 8 if item_type == _STRING else 12
        if count > self.remaining() // smallest:
            raise GGUFFormatError(
                f"array at byte {self.pos} claims {count} items, more than the {self.remaining()} bytes left can hold"
            )
        if item_type in _SCALARS:
            dtype = _SCALARS[item_type][1]
            return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).copy()
        if item_type == _STRING:
            return self.string_array(count)
        return [self.value(item_type, depth) for _ in range(count)]

    def string_array(self, count: int) -> StringArray:
        """A string array as a lazy sequence: only the offsets are read here (a vocabulary has
        262 144 strings; building them all took ~0.6 s and most loads never look at them)."""
        buf, first = self.buf, self.pos
        starts = _checked_starts(buf, first, count, self.index.get(first, count))
        if starts is None:
            starts = self._walk(count)
            if count:
                self.index.put(first, count, starts)
        ends = np.empty(count, np.int64)
        if count:
            ends[:-1] = starts[1:] - 8
            ends[-1] = int(starts[-1]) + struct.unpack_from("<Q", buf, int(starts[-1]) - 8)[0]
            self.pos = int(ends[-1])
        return StringArray(buf, starts, ends)

    def _walk(self, count: int) -> np.ndarray:
        """Item offsets by following the length prefixes (bounds checked at every step)."""
        buf, pos = self.buf, self.pos
        positions = [0] * count
        unpack = struct.Struct("<Q").unpack_from
        size = len(buf)
        try:
            for i in range(count):
                positions[i] = pos
                pos += 8 + unpack(buf, pos)[0]
                if pos > size:
                    break
        except struct.error:
            pos = size + 1
        if pos > size:
            raise GGUFFormatError(f"string array item {i} at byte {positions[i]} runs past the end of the file")
        return np.array(positions, np.int64) + 8


class StringArray(Sequence):
    """GGUF string-array items as ``bytes``, sliced out of the mapped file on access."""

    def __init__(self, buf: memoryview, starts: np.ndarray, ends: np.ndarray):
        self._buf, self._starts, self._ends = buf, starts, ends

    def __len__(self) -> int:
        return len(self._starts)

    def serialized(self) -> memoryview:
        """The array's bytes as stored (each item's u64 length, then its bytes): one slice of
        the file that identifies the whole array, e.g. to key a cache by its content."""
        if not len(self._starts):
            return memoryview(b"")
        return self._buf[int(self._starts[0]) - 8 : int(self._ends[-1])]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return bytes(self._buf[int(self._starts[index]) : int(self._ends[index])])

    def __iter__(self):
        buf = self._buf
        for a, b in zip(self._starts.tolist(), self._ends.tolist()):
            yield bytes(buf[a:b])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


@dataclass
class ParsedGGUF:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    mm: mmap.mmap

    alignment: int = DEFAULT_ALIGNMENT

    def tensor_nbytes(self, info: TensorInfo) -> int:
        """Bytes of one tensor, after checking its type and that its rows fill whole blocks."""
        qtype = GGMLQuantizationType(info.type_id)
        block, size = GGML_QUANT_SIZES[qtype]
        if info.dims[0] % block:
            raise GGUFFormatError(
                f"tensor {shown(info.name)}: row of {info.dims[0]} is not a multiple of the {qtype.name} block {block}"
            )
        n = 1
        for d in info.dims:
            n *= d
        return n // block * size

    def tensor_bytes(self, info: TensorInfo) -> np.ndarray:
        """Zero-copy uint8 view of one tensor's data (bounds checked)."""
        n_bytes = self.tensor_nbytes(info)
        start = self.data_offset + info.offset
        if start + n_bytes > len(self.mm):
            raise GGUFFormatError(
                f"file is truncated: tensor {shown(info.name)} ends at byte {start + n_bytes} "
                f"but the file has {len(self.mm)} bytes"
            )
        return np.frombuffer(self.mm, dtype=np.uint8, count=n_bytes, offset=start)

    def check_layout(self, nbytes: list[int]) -> None:
        """Tensor data: each offset aligned, inside the file, no two tensors overlapping."""
        data_size = len(self.mm) - self.data_offset
        order = sorted(range(len(self.tensors)), key=lambda i: self.tensors[i].offset)
        end, prev = 0, None
        for i in order:
            t = self.tensors[i]
            if t.offset % self.alignment:
                raise GGUFFormatError(
                    f"tensor {shown(t.name)} starts at data offset {t.offset}, not a "
                    f"multiple of the alignment {self.alignment}"
                )
            if t.offset < end:
                raise GGUFFormatError(f"tensor {shown(t.name)} overlaps tensor {shown(prev)} in the data section")
            end, prev = t.offset + nbytes[i], t.name
            if end > data_size:
                raise GGUFFormatError(
                    f"file is truncated: tensor {shown(t.name)} ends at byte "
                    f"{self.data_offset + end} but the file has {len(self.mm)} bytes"
                )


def parse_gguf(fileobj: BinaryIO, index: StringIndex | None = None) -> ParsedGGUF:
    """Parse header, metadata and tensor infos of an open binary file (``index``: remembered
    string-array offsets, checked before use)."""
    try:
        mm = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError as exc:
        raise GGUFFormatError("file is empty") from exc
    cur = _Cursor(memoryview(mm), index)
    if bytes(cur.take(4)) != b"GGUF":
        raise GGUFFormatError("wrong magic (not a GGUF file)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise GGUFFormatError(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string().decode("utf-8", errors="replace")
        metadata[key] = cur.value(cur.scalar("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string().decode("utf-8", errors="replace")
        n_dims = cur.scalar("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {shown(name)} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = tuple(cur.scalar("<Q") for _ in range(n_dims))
        if min(dims) < 1 or max(dims) > len(mm) * 32:
            raise GGUFFormatError(f"tensor {shown(name)} has dimensions {dims}, impossible in a {len(mm)}-byte file")
        tensors.append(TensorInfo(name, cur.scalar("<I"), dims, cur.scalar("<Q")))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
        or alignment > 1 << 20
    ):
        raise GGUFFormatError(f"general.alignment {quote(alignment)} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    del cur
    return ParsedGGUF(version, metadata, tensors, data_offset, mm, alignment)
