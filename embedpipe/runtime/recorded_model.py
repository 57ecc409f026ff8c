"""Open the model a file was made with: the one place that matches a model to a recorded SHA-256.

Embedding datasets (schema metadata) and index files (header) both record the SHA-256 and path
of the GGUF that made their vectors. A query embedded by any other model lives in a different
space, so every score would be meaningless: such a model is refused unless the caller opts in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from embedpipe.errors import EmbedpipeError


class ModelRecord(Protocol):
    """What a file records about its model (`DatasetMeta`, `IndexMeta`)."""

    model_sha256: str
    model_path: str


class ModelMismatchError(EmbedpipeError):
    """The query model is not the one the stored vectors came from."""


def open_embedder(
    recorded: ModelRecord | Any,
    model: str | os.PathLike | None = None,
    allow_mismatch: bool = False,
    backend: str = "auto",
    threads: int | None = None,
) -> Any:
    """Embedder for vectors made by `recorded` (a `ModelRecord`, or anything whose `.meta` is one,
    e.g. a loaded index): `model`, else the recorded path if it still exists, else the default
    cached model. Raises ModelMismatchError when its SHA-256 differs from the record."""
    from embedpipe.runtime.embedder import Embedder

    record = getattr(recorded, "meta", recorded)
    recorded_path = record.model_path if record.model_path and Path(record.model_path).exists() else None
    emb = Embedder.load(model or recorded_path, backend=backend, threads=threads)
    want = record.model_sha256
    if want and emb.model_sha256 != want and not allow_mismatch:
        raise ModelMismatchError(
            f"model {emb.model_path} has SHA-256 {emb.model_sha256[:16]}…, but the vectors were "
            f"made by {record.model_path or 'another model'} ({want[:16]}…); pass --model with "
            "that file (or --allow-model-mismatch to use it anyway)"
        )
    return emb
