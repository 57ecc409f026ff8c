"""Streaming ingest: corpora (Parquet, Arrow IPC, JSONL, CSV) -> Parquet embedding datasets.

from embedpipe.pipeline import IngestConfig, ingest
summary = ingest(IngestConfig(inputs=["corpus/"], output="embeddings/", task="document"))
"""

from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.job import IngestSummary, ingest

__all__ = ["IngestConfig", "IngestSummary", "ingest"]
