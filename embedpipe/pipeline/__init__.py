"""Streaming ingest: corpora (Parquet, Arrow IPC, JSONL, CSV) -> Parquet embedding datasets.

from embedpipe.pipeline import IngestConfig, ingest
summary = ingest(IngestConfig(inputs=["corpus/"], output="embeddings/", task="document"))

The names below are imported on first use, so that reading one submodule (e.g. the resume
manifest's header) does not load the whole ingest engine.
"""

from __future__ import annotations

from embedpipe.lazy_exports import lazy_exports

_EXPORTS = {"IngestConfig": "config", "IngestSummary": "job", "ingest": "job"}

__all__ = ["IngestConfig", "IngestSummary", "ingest"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
