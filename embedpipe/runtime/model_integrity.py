"""Is the model file still the one that was pulled, and is what it computes finite?

Two cheap guards against a model that went bad after its SHA-256 was checked at pull time:

* a sampled fingerprint of the tensor data, recorded beside the file when it is written
  (``MODEL.gguf.integrity.json``) and compared on every load: 64 bytes every 8 KiB of the data
  section, one CRC-32 per tensor. Same-size corruption of 8 KiB or more is caught at load
  without hashing the whole file; a smaller edit that produces NaN is caught by:
* `check_finite`: one vectorized test per forward batch, raising instead of returning NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ModelFileError, shown

SAMPLE_BYTES = 64
STRIDE = 8192
VERSION = 1
FORCE_HINT = "the file is corrupt: run `embedpipe model pull --force` (or re-convert it)"


def sidecar(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".integrity.json")


# Tensors are sampled this many bytes at a time, and each window's pages are dropped from the
# process after it is read: touching one cache line per 8 KiB maps every page of the file into
# the process (the kernel maps the pages around each fault), which would count the whole model
# in the resident set of a process that only needs the repacked weights.
WINDOW = 2048 * STRIDE


def _crc(raw: np.ndarray, release: Any = None) -> int:
    """CRC-32 of one tensor's sampled bytes: the first SAMPLE_BYTES of every STRIDE (strided
    copies, no index arrays) and its last SAMPLE_BYTES. ``release(view)`` is called on each
    window once it has been read."""
    full = len(raw) // STRIDE
    crc = 0
    for start in range(0, full, WINDOW // STRIDE):
        stop = min(full, start + WINDOW // STRIDE)
        window = raw[start * STRIDE : stop * STRIDE]
        crc = zlib.crc32(np.ascontiguousarray(window.reshape(stop - start, STRIDE)[:, :SAMPLE_BYTES]), crc)
        if release is not None:
            release(window)
    crc = zlib.crc32(raw[full * STRIDE :][:SAMPLE_BYTES], crc)
    return zlib.crc32(raw[-SAMPLE_BYTES:], crc)


def fingerprint(model_file: Any) -> dict[str, int]:
    """Tensor name -> CRC-32 of its sampled bytes (computed once per opened file)."""
    cached = getattr(model_file, "_integrity_fingerprint", None)
    if cached is None:
        release = getattr(model_file, "release_pages", None)
        cached = {name: _crc(t.raw, release) for name, t in model_file.tensors.items()}
        try:
            model_file._integrity_fingerprint = cached
        except AttributeError:  # an object without a __dict__: recompute next time
            pass
    return cached


def fingerprint_digest(model_file: Any) -> str:
    """One hex digest of `fingerprint` (what a cache derived from the file's tensors is keyed by:
    a same-size, same-mtime change of 8 KiB or more changes it)."""
    text = json.dumps([VERSION, STRIDE, SAMPLE_BYTES, sorted(fingerprint(model_file).items())])
    return hashlib.sha256(text.encode()).hexdigest()


def known_fingerprint_digest(model_file: Any) -> str | None:
    """`fingerprint_digest` when the fingerprint of this opened file was already computed (by
    `verify`), else None: a cheap extra check for callers that must not read the whole file."""
    if getattr(model_file, "_integrity_fingerprint", None) is None:
        return None
    return fingerprint_digest(model_file)


def record(model_file: Any) -> None:
    """Write the sidecar for a freshly written (and verified) model file."""
    path = sidecar(model_file.path)
    data = {
        "version": VERSION,
        "size": model_file.path.stat().st_size,
        "stride": STRIDE,
        "sample": SAMPLE_BYTES,
        "tensors": fingerprint(model_file),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def verify(model_file: Any) -> None:
    """Compare the file with its sidecar when there is one (files never pulled have none)."""
    try:
        data = json.loads(sidecar(model_file.path).read_text())
    except (OSError, ValueError):
        return
    if (
        not isinstance(data, dict)
        or data.get("version") != VERSION
        or data.get("stride") != STRIDE
        or data.get("sample") != SAMPLE_BYTES
        or not isinstance(data.get("tensors"), dict)
    ):
        return
    if data.get("size") != model_file.path.stat().st_size:
        raise ModelFileError(f"{model_file.path}: size differs from when it was pulled; {FORCE_HINT}")
    expected = data["tensors"]
    if set(expected) != set(model_file.tensors):
        raise ModelFileError(f"{model_file.path}: its tensors differ from when it was pulled; {FORCE_HINT}")
    actual = fingerprint(model_file)
    for name in model_file.tensors:
        if actual[name] != expected[name]:
            raise ModelFileError(
                f"{model_file.path}: the bytes of tensor {shown(name)} changed since it was pulled; {FORCE_HINT}"
            )


def check_finite(vectors: np.ndarray, model_path: Any) -> None:
    """Raise when a forward batch produced NaN or infinity (corrupt weights or metadata)."""
    if not np.isfinite(vectors).all():
        raise ModelFileError(f"{model_path}: the model produced NaN or infinite values; {FORCE_HINT}")
