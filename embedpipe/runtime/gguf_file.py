"""Open a GGUF file (memory-mapped) and check it before any compute.

Everything that can go wrong with a model file (missing, truncated, bad magic, unknown tensor
type, tensor data past the end of the file) surfaces here as one `ModelFileError` that names
the file and the problem, so that no kernel is ever handed a short buffer.

Weights are views of the mapping, so only the pages a model reads become resident. Small
parameters that a model reads whole at load (norm weights, biases, position tables) are read
with read(2) instead (``read_tensor``): where the page cache holds the file in large folios
(2 MB on recent kernels with transparent huge pages), touching a 3 KB vector through the
mapping maps its whole folio, and the norms of two dozen layers would map 100 MB of weights
that the weight cache already holds repacked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from embedpipe.errors import ModelFileError, shown
from embedpipe.runtime import model_integrity
from embedpipe.runtime.gguf_parse import GGUFFormatError, StringIndex, parse_gguf
from embedpipe.runtime.gguf_schema import metadata_problems

# What to do about a damaged file; the cached default model is repaired by a forced pull.
REPAIR_HINT = "re-download or re-convert it (the cached model: `embedpipe model pull --force`)"

# Weight storage types embedpipe runs (numpy reference and JIT kernels alike).
SUPPORTED_WEIGHT_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q6_K,
    }
)


class _RowView:
    """Rows of a weight stored as ``raw`` bytes in ggml blocks."""

    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return self.shape[-1] // block * size

    def rows(self) -> np.ndarray:
        """The raw bytes as (rows, row_bytes)."""
        return self.raw.reshape(-1, self.row_bytes)


@dataclass(frozen=True)
class WeightTensor(_RowView):
    """One tensor as stored: `raw` is a zero-copy uint8 view of its bytes in the mmap.

    `shape` is numpy order (rows, cols): a linear weight W[N×K] has shape (N, K) and each of
    its N rows occupies `row_bytes` bytes of `raw`.
    """

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray


class DerivedTensor(_RowView):
    """A weight built from stored tensors (fused rows, a widened type) only when its bytes are
    first read: a backend that finds its repack in the weight cache never builds it."""

    def __init__(self, name: str, qtype: GGMLQuantizationType, shape: tuple[int, ...], build: Callable[[], np.ndarray]):
        self.name, self.qtype, self.shape = name, qtype, tuple(shape)
        self._build = build

    @functools.cached_property
    def raw(self) -> np.ndarray:  # type: ignore[override]
        return self._build()


class GGUFModelFile:
    """Metadata and tensors of one GGUF file, validated on open."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a directory, not a GGUF file" if self.path.is_dir() else "no such model file"
            raise ModelFileError(f"{self.path}: {what}")
        index = _SavedStringIndex(self.path)
        try:
            with open(self.path, "rb") as fh:
                self._parsed = parse_gguf(fh, index)
                # the inode mapped, for read_tensor (the path may be replaced meanwhile)
                self._fd = os.dup(fh.fileno())
                weakref.finalize(self, os.close, self._fd)
        except GGUFFormatError as exc:
            raise ModelFileError(f"{self.path}: not a readable GGUF file: {exc}; {REPAIR_HINT}") from exc
        except OSError as exc:
            raise ModelFileError(f"{self.path}: cannot read ({exc.strerror})") from exc
        index.save()
        self.metadata: dict[str, Any] = self._parsed.metadata
        problems = metadata_problems(self.metadata)
        if problems:
            raise ModelFileError(f"{self.path}: {problems[0]}; {REPAIR_HINT}")
        self.tensors: dict[str, WeightTensor] = {}
        self._base: int | None = None
        self._load_tensors()
        model_integrity.verify(self)

    def _load_tensors(self) -> None:
        supported = ", ".join(sorted(q.name for q in SUPPORTED_WEIGHT_TYPES))
        sizes = []
        for info in self._parsed.tensors:
            name = shown(info.name)
            try:
                qtype = GGMLQuantizationType(info.type_id)
            except ValueError:
                raise ModelFileError(
                    f"{self.path}: tensor {name} has unknown type id {info.type_id}; {REPAIR_HINT}"
                ) from None
            if qtype not in SUPPORTED_WEIGHT_TYPES:
                raise ModelFileError(
                    f"{self.path}: tensor {name} has type {qtype.name}; "
                    f"{qtype.name} is not supported (supported: {supported})"
                )
            if info.name in self.tensors:
                raise ModelFileError(f"{self.path}: tensor {name} appears twice; {REPAIR_HINT}")
            try:
                sizes.append(self._parsed.tensor_nbytes(info))
            except GGUFFormatError as exc:
                raise ModelFileError(f"{self.path}: {exc}; {REPAIR_HINT}") from exc
            self.tensors[info.name] = None  # type: ignore[assignment]  # placeholder: duplicate check
        try:
            self._parsed.check_layout(sizes)
        except GGUFFormatError as exc:
            raise ModelFileError(f"{self.path}: {exc}; {REPAIR_HINT}") from exc
        for info in self._parsed.tensors:
            qtype = GGMLQuantizationType(info.type_id)
            shape = tuple(int(d) for d in reversed(info.dims))
            self.tensors[info.name] = WeightTensor(info.name, qtype, shape, self._parsed.tensor_bytes(info))

    def read_tensor(self, name: str) -> WeightTensor:
        """``tensors[name]`` with its bytes read into private memory by read(2), so that no page
        of the mapping becomes resident (see the module docstring). For parameters read whole
        at load; weights stay views of the mapping."""
        tensor = self.tensors[name]
        nbytes = tensor.raw.nbytes
        data = bytearray(nbytes)
        try:
            got = os.preadv(self._fd, [data], self._file_offset(tensor.raw))
        except OSError as exc:
            raise ModelFileError(f"{self.path}: cannot read tensor {shown(name)} ({exc.strerror})") from exc
        if got != nbytes:
            raise ModelFileError(f"{self.path}: tensor {shown(name)} ends past the end of the file; {REPAIR_HINT}")
        return WeightTensor(name, tensor.qtype, tensor.shape, np.frombuffer(data, dtype=np.uint8))

    def release_pages(self, view: np.ndarray) -> None:
        """Drop the pages under ``view`` (a slice of a tensor) from this process's resident set;
        they stay in the page cache and fault back in when read again. Reading a whole file once
        (integrity sampling) then leaves no trace in the resident set."""
        mm = self._parsed.mm
        if not view.size or not hasattr(mm, "madvise"):
            return
        start = self._file_offset(view)
        lo = start - start % mmap.PAGESIZE
        hi = min(len(mm), start + view.nbytes)
        if 0 <= lo < hi:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):  # advice only
                pass

    def _file_offset(self, view: np.ndarray) -> int:
        """Where ``view`` (a slice of the mapping, as every tensor's ``raw``) starts in the file."""
        if self._base is None:
            self._base = np.frombuffer(self._parsed.mm, dtype=np.uint8, count=1).ctypes.data
        return view.ctypes.data - self._base

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value: str, int/float/bool, numpy array, or list of bytes for string arrays."""
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelFileError(f"{self.path}: missing metadata key {shown(key)}; {REPAIR_HINT}")
        return value

    @property
    def architecture(self) -> str:
        return self.require("general.architecture")

    def sha256(self) -> str:
        """SHA-256 of the file, remembered in a sidecar keyed by size and mtime (hashing 300 MB costs ~1 s)."""
        return file_sha256(self.path)


SAVED_INDEX_KEEP = 64  # offset files kept (most recently used); ~2 MB each for a 262 144-token vocabulary


class _SavedStringIndex(StringIndex):
    """String-array offsets of one file version (path, size, mtime) kept in the cache
    directory (``gguf_index/``); the parser checks them against the file before use."""

    MIN_ITEMS = 16384  # shorter arrays are walked faster than a file is read

    def __init__(self, path: Path):
        self._saved: dict[str, np.ndarray] | None = None
        self._new: dict[str, np.ndarray] = {}
        try:
            from embedpipe.runtime.cache_root import gguf_index_dir

            st = path.stat()
            stamp = f"1:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
            self._file: Path | None = gguf_index_dir() / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.npz"
        except OSError:
            self._file = None

    def get(self, pos: int, count: int) -> np.ndarray | None:
        if self._saved is None:
            self._saved = {}
            if self._file is not None:
                try:
                    with np.load(self._file) as data:
                        self._saved = {k: data[k] for k in data.files}
                    os.utime(self._file)
                except (OSError, ValueError, KeyError, EOFError):  # none yet, or damaged
                    pass
        return self._saved.get(f"{pos}_{count}")

    def put(self, pos: int, count: int, starts: np.ndarray) -> None:
        if count >= self.MIN_ITEMS:
            self._new[f"{pos}_{count}"] = starts

    def save(self) -> None:
        if not self._new or self._file is None:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_name(f"{self._file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **{**(self._saved or {}), **self._new})
            os.replace(tmp, self._file)
            kept = sorted(self._file.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[SAVED_INDEX_KEEP:]:
                old.unlink(missing_ok=True)
        except OSError:  # a read-only cache only costs the walk next time
            pass


def known_sha256(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 remembered for ``path`` when its size and mtime still match, else None
    (answers without reading the file)."""
    path = Path(path)
    try:
        st = path.stat()
        cached = json.loads(path.with_name(path.name + ".sha256.json").read_text())
        if cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
            value = cached["sha256"]
            return value if isinstance(value, str) and len(value) == 64 else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    known = known_sha256(path)
    if known is not None:
        return known
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256.json")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": value}))
        os.replace(tmp, sidecar)
    except OSError:
        pass
    return value
