"""Open a GGUF file with gguf-py's memory-mapped reader and check it before any compute.

Everything that can go wrong with a model file (missing, truncated, bad magic, unknown tensor
type, tensor data past the end of the file) surfaces here as one `ModelFileError` that names
the file and the problem, so that no kernel is ever handed a short buffer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from embedpipe.errors import ModelFileError

GGUF_MAGIC = b"GGUF"

# Weight storage types embedpipe runs (numpy reference and JIT kernels alike).
SUPPORTED_WEIGHT_TYPES: frozenset[GGMLQuantizationType] = frozenset({
    GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K,
})


@dataclass(frozen=True)
class WeightTensor:
    """One tensor as stored: `raw` is a zero-copy uint8 view of its bytes in the mmap.

    `shape` is numpy order (rows, cols): a linear weight W[N×K] has shape (N, K) and each of
    its N rows occupies `row_bytes` bytes of `raw`.
    """

    name: str
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


class GGUFModelFile:
    """Metadata and tensors of one GGUF file, validated on open."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._check_header()
        try:
            self._reader = GGUFReader(self.path, "r")
        except (ValueError, KeyError, IndexError, OverflowError) as exc:
            raise ModelFileError(f"{self.path}: not a readable GGUF file ({exc})") from exc
        self.metadata: dict[str, Any] = {}
        for name, field in self._reader.fields.items():
            if not name.startswith("GGUF."):
                self.metadata[name] = field
        self.tensors: dict[str, WeightTensor] = {}
        self._load_tensors()

    def _check_header(self) -> None:
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such model file")
        with open(self.path, "rb") as fh:
            head = fh.read(24)
        if len(head) < 24:
            raise ModelFileError(f"{self.path}: file is truncated ({len(head)} bytes)")
        if head[:4] != GGUF_MAGIC:
            raise ModelFileError(f"{self.path}: wrong magic {head[:4]!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")

    def _load_tensors(self) -> None:
        file_size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.tensor_type not in SUPPORTED_WEIGHT_TYPES:
                supported = ", ".join(sorted(q.name for q in SUPPORTED_WEIGHT_TYPES))
                raise ModelFileError(
                    f"{self.path}: tensor {t.name} has type {t.tensor_type.name}; "
                    f"{t.tensor_type.name} is not supported (supported: {supported})"
                )
            end = t.data_offset + t.n_bytes
            if end > file_size:
                raise ModelFileError(
                    f"{self.path}: file is truncated: tensor {t.name} ends at byte {end} "
                    f"but the file has {file_size} bytes"
                )
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)
            if raw.nbytes != t.n_bytes:
                raise ModelFileError(f"{self.path}: tensor {t.name} has {raw.nbytes} bytes, expected {t.n_bytes}")
            self.tensors[t.name] = WeightTensor(t.name, GGMLQuantizationType(t.tensor_type), shape, raw)

    def get(self, key: str, default: Any = None) -> Any:
        """A scalar, string or array metadata value by key."""
        field = self.metadata.get(key)
        if field is None:
            return default
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                return [bytes(field.parts[i]) for i in field.data]
            return np.concatenate([field.parts[i] for i in field.data]) if field.data else np.array([])
        if main == GGUFValueType.STRING:
            return bytes(field.parts[-1]).decode("utf-8")
        value = field.parts[-1][0]
        return value.item() if hasattr(value, "item") else value

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelFileError(f"{self.path}: missing metadata key {key!r}")
        return value

    @property
    def architecture(self) -> str:
        return self.require("general.architecture")

    def sha256(self) -> str:
        """SHA-256 of the file, remembered in a sidecar keyed by size and mtime (hashing 300 MB costs ~1 s)."""
        return file_sha256(self.path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256.json")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("size") == stamp["size"] and cached.get("mtime_ns") == stamp["mtime_ns"]:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
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
