"""Open the model a file was made with: the one place that matches a model to a recorded SHA-256.

Embedding datasets (schema metadata) and index files (header) both record the SHA-256 and path
of the GGUF that made their vectors. A query embedded by any other model lives in a different
space, so every score would be meaningless: such a model is refused unless the caller opts in.
The refusal comes before the model is loaded, and before it is hashed whenever its SHA-256 is
already known (the `.sha256.json` sidecar, valid while size and mtime are unchanged) or its size
alone proves it differs from the recorded model file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from embedpipe.errors import ArgumentError


class ModelRecord(Protocol):
    """What a file records about its model (`DatasetMeta`, `IndexMeta`)."""

    model_sha256: str
    model_path: str


class ModelMismatchError(ArgumentError):
    """The query model is not the one the stored vectors came from (names `model` and
    `allow_mismatch` in Python, `--model` and `--allow-model-mismatch` on the CLI)."""


def _mismatch(path: Path, got: str | None, record: ModelRecord) -> ModelMismatchError:
    which = f"SHA-256 {got[:16]}…" if got else "its size differs from the recorded file"
    wanted = record.model_path or "the model that made them"
    return ModelMismatchError(
        "model",
        f"{path} ({which}) did not make these vectors; pass {{allow_model_mismatch}} to use it "
        f"anyway, or {{model}} {wanted} (SHA-256 {record.model_sha256[:16]}…)",
        ("allow_model_mismatch", "model"),
    )


def check_model(path: str | os.PathLike[str], record: ModelRecord) -> str:
    """The SHA-256 of the model file at ``path`` when it is the one ``record`` names; raises
    ModelMismatchError otherwise. Hashes the file only when nothing cheaper can decide."""
    from embedpipe.runtime.gguf_file import file_sha256, known_sha256

    path = Path(path)
    want = record.model_sha256
    known = known_sha256(path)
    if known is not None:
        if known != want:
            raise _mismatch(path, known, record)
        return known
    recorded = Path(record.model_path) if record.model_path else None
    if recorded is not None and recorded != path and known_sha256(recorded) == want:
        try:
            if recorded.stat().st_size != path.stat().st_size:
                raise _mismatch(path, None, record)
        except OSError:
            pass
    got = file_sha256(path)
    if got != want:
        raise _mismatch(path, got, record)
    return got


def open_embedder(
    recorded: ModelRecord | Any,
    model: str | os.PathLike | None = None,
    allow_mismatch: bool = False,
    backend: str = "auto",
    threads: int | None = None,
) -> Any:
    """Embedder for vectors made by `recorded` (a `ModelRecord`, or anything whose `.meta` is one,
    e.g. a loaded index): `model`, else the recorded path if it still exists, else the default
    cached model. Raises ModelMismatchError, before loading anything, when its SHA-256 differs
    from the record."""
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.registry import resolve_model

    record = getattr(recorded, "meta", recorded)
    recorded_path = record.model_path if record.model_path and Path(record.model_path).exists() else None
    path = resolve_model(model or recorded_path)
    sha = check_model(path, record) if record.model_sha256 and not allow_mismatch else None
    emb = Embedder.load(path, backend=backend, threads=threads)
    if sha is not None:
        emb.remember_sha256(sha)
    return emb
