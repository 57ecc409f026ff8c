"""Streaming ingest: corpora (Parquet, Arrow IPC, JSONL, CSV) -> Parquet embedding datasets.

from embedpipe.pipeline import IngestConfig, ingest
summary = ingest(IngestConfig(inputs=["corpus/"], output="embeddings/", task="document"))

The names below are imported on first use, so that reading one submodule (e.g. the resume
manifest's header) does not load the whole ingest engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"IngestConfig": "config", "IngestSummary": "job", "ingest": "job"}

__all__ = ["IngestConfig", "IngestSummary", "ingest"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
