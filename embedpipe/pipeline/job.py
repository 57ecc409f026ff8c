"""`ingest(config) -> IngestSummary`: the Python API behind `embedpipe ingest`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from embedpipe.errors import ArgumentError
from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.dataset import DatasetMeta, id_type, output_schema
from embedpipe.pipeline.manifest import SUMMARY, Manifest
from embedpipe.pipeline.processor import Stats, WindowProcessor
from embedpipe.pipeline.progress import Progress
from embedpipe.pipeline.readers import Corpus

if TYPE_CHECKING:
    from embedpipe.runtime.embedder import Embedder


@dataclass
class IngestSummary:
    """Totals over the whole job (all runs, from the manifest) plus this run's timing."""

    output: str
    parts: int
    rows_in: int
    rows_embedded: int
    output_rows: int
    chunked_rows: int
    truncated_rows: int
    skipped_rows: int
    skipped_reasons: dict[str, int]
    tokens: int
    text_tokens: int
    cache_hits: int
    sequences_embedded: int
    run_rows_in: int = 0
    run_output_rows: int = 0
    run_tokens: int = 0
    wall_seconds: float = 0.0
    embed_seconds: float = 0.0
    embeddings_per_second: float = 0.0
    tokens_per_second: float = 0.0
    resumed: bool = False
    already_complete: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.skipped_reasons.items()) or "none"
        lines = [
            f"output      {self.output} ({self.parts} part file(s))",
            f"rows        {self.rows_in} read, {self.rows_embedded} embedded, {self.skipped_rows} skipped ({reasons})",
            f"vectors     {self.output_rows} ({self.chunked_rows} row(s) chunked, {self.truncated_rows} truncated)",
            f"tokens      {self.tokens} ({self.cache_hits} row(s) from cache, {self.sequences_embedded} sequences embedded)",
            f"this run    {self.run_rows_in} rows in {self.wall_seconds:.2f} s: {self.embeddings_per_second:.1f} embeddings/s, "
            f"{self.tokens_per_second:.0f} tokens/s"
            + (" (resumed)" if self.resumed else "")
            + (" (already complete: nothing to do)" if self.already_complete else ""),
        ]
        return "\n".join(lines)


def resolve(cfg: IngestConfig, emb: Embedder) -> IngestConfig:
    """Fill model-dependent defaults (dim, max_tokens) and check them against the model."""
    from embedpipe.runtime.dims import check_dim
    from embedpipe.runtime.prompts import DOCUMENT_TASK, canonical_task

    cfg = replace(cfg, keep=list(cfg.keep), inputs=list(cfg.inputs)).validate()
    cfg.task = canonical_task(cfg.task)
    if cfg.title_col and cfg.task != DOCUMENT_TASK:
        raise ArgumentError("title_col", f"is used by the 'document' task prompt only (task is {cfg.task!r})")
    cfg.dim = check_dim(cfg.dim, emb.dims, cfg.any_dim)
    cfg.max_tokens = emb.max_tokens if cfg.max_tokens is None else int(cfg.max_tokens)
    if not 0 < cfg.max_tokens <= emb.max_tokens:
        raise ArgumentError("max_tokens", f"must be in 1..{emb.max_tokens} (the model's context), got {cfg.max_tokens}")
    return cfg


def make_schema(cfg: IngestConfig, emb: Embedder, corpus: Corpus) -> pa.Schema:
    # column types come from the first input that has columns (empty files have none)
    first = next((s for s in (src.schema() for src in corpus.sources) if s.names), pa.schema([]))
    id_t = id_type((first.field(cfg.id_col).type if cfg.id_col in first.names else pa.string()) if cfg.id_col else None)
    keep = [
        pa.field(c, pa.string())
        if c in (cfg.text_col, cfg.title_col) or c not in first.names
        else first.field(c).with_nullable(True)
        for c in cfg.keep
    ]
    meta = DatasetMeta(emb.model_sha256, str(emb.model_path), cfg.task, cfg.dim, cfg.dtype)
    return output_schema(id_t, keep, meta)


def job_header(cfg: IngestConfig, emb: Embedder, corpus: Corpus) -> dict:
    return {"model_sha256": emb.model_sha256, **cfg.fingerprint(), "inputs": corpus.identity()}


def open_processor(
    cfg: IngestConfig, emb: Embedder, corpus: Corpus, manifest: Manifest | None = None
) -> WindowProcessor:
    cache = None
    if cfg.cache:
        cache = EmbeddingCache.in_dir(cfg.cache_dir, max_bytes=cfg.cache_max_bytes)
    processor = WindowProcessor(emb, cfg, make_schema(cfg, emb, corpus), cache)
    if manifest is not None and cfg.id_col and cfg.on_duplicate_id != "keep":
        processor.seen_ids.update(_committed_ids(Path(cfg.output), manifest))
    return processor


def _committed_ids(out_dir: Path, manifest: Manifest) -> set:
    """Ids already written by earlier runs of a resumed job (duplicate detection spans them)."""
    import pyarrow.parquet as pq

    ids: set = set()
    for entry in manifest.parts.values():
        ids.update(pq.read_table(out_dir / entry["file"], columns=["id"]).column("id").to_pylist())
    return ids


def _totals(manifest: Manifest) -> Stats:
    total = Stats()
    for entry in manifest.parts.values():
        total.add(Stats.from_dict(entry))
    return total


def _write_summary(out_dir: Path, summary: IngestSummary) -> None:
    tmp = out_dir / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / SUMMARY)


def ingest(cfg: IngestConfig, embedder: Embedder | None = None) -> IngestSummary:
    """Embed a corpus into a Parquet dataset directory; resumes an interrupted job in place.

    `embedder` (anything with the Embedder contract) defaults to Embedder.load(cfg.model, ...).
    """
    t0 = time.perf_counter()
    out_dir = Path(cfg.output)
    if any(Path(item).is_dir() and Path(item).resolve() == out_dir.resolve() for item in cfg.inputs):
        raise ArgumentError("output", f"({out_dir}) is an input directory; write the embeddings elsewhere")
    if embedder is None:
        from embedpipe.runtime.embedder import Embedder

        embedder = Embedder.load(cfg.model, backend=cfg.backend, threads=cfg.threads)
    cfg = resolve(cfg, embedder)
    corpus = Corpus.open(cfg.inputs, cfg.source_columns())
    manifest = Manifest.open(out_dir, job_header(cfg, embedder, corpus), resume=cfg.resume, overwrite=cfg.overwrite)
    try:
        return _run(cfg, embedder, corpus, manifest, out_dir, t0)
    finally:
        manifest.close()


def _run(cfg: IngestConfig, embedder, corpus: Corpus, manifest: Manifest, out_dir: Path, t0: float) -> IngestSummary:
    resumed = bool(manifest.parts)
    already_complete = manifest.done is not None
    run = Stats()
    if not already_complete:
        total_rows = corpus.total_rows()
        done_rows = sum(e["end"] - e["start"] for e in manifest.parts.values())
        with Progress(total_rows, done_rows, enabled=cfg.progress) as progress:

            def on_window(stats: Stats) -> None:
                run.add(stats)
                progress.update(stats)

            if cfg.engine == "ray":
                from embedpipe.pipeline.engine_ray import run_ray

                run_ray(cfg, corpus, manifest, on_window)
            else:
                from embedpipe.pipeline.engine_local import run_local

                processor = open_processor(cfg, embedder, corpus, manifest)
                processor.on_batch = progress.batch
                run_local(cfg, processor, corpus, manifest, on_window)
        manifest.finish(_totals(manifest).to_dict())
    wall = time.perf_counter() - t0
    total = _totals(manifest)
    summary = IngestSummary(
        output=str(out_dir),
        parts=len(manifest.parts),
        **total.counts,
        skipped_reasons=dict(sorted(total.skipped_reasons.items())),
        run_rows_in=run.counts["rows_in"],
        run_output_rows=run.counts["output_rows"],
        run_tokens=run.counts["tokens"],
        wall_seconds=round(wall, 4),
        embed_seconds=round(run.embed_seconds, 4),
        embeddings_per_second=round(run.counts["output_rows"] / wall, 2) if wall > 0 else 0.0,
        tokens_per_second=round(run.counts["tokens"] / wall, 1) if wall > 0 else 0.0,
        resumed=resumed,
        already_complete=already_complete,
    )
    _write_summary(out_dir, summary)
    return summary
