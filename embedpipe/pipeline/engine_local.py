"""Local engine: one process walks the parts in order, skipping those the manifest has."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.manifest import Manifest
from embedpipe.pipeline.parts import RowFeeder, run_part
from embedpipe.pipeline.processor import Stats, WindowProcessor
from embedpipe.pipeline.readers import Corpus


def run_local(
    cfg: IngestConfig,
    processor: WindowProcessor,
    corpus: Corpus,
    manifest: Manifest,
    on_window: Callable[[Stats], None] | None = None,
) -> None:
    size = cfg.part_rows
    index = 0
    while index in manifest.parts:
        index += 1
    if index and manifest.parts[index - 1]["end"] < index * size:
        return  # the last committed part was the short final one
    feeder = RowFeeder(corpus.batches(cfg.source_columns(), start=index * size, rows=cfg.read_rows))
    out_dir = Path(cfg.output)
    while True:
        if index in manifest.parts:  # committed out of order (e.g. by the Ray engine)
            if feeder.skip(size) < size:
                return
            index += 1
            continue
        if index > 0 and feeder.at_end():
            return
        result = run_part(processor, out_dir, index, index * size, feeder, size, on_window)
        manifest.commit(result.record, result.skipped)
        if result.record["end"] - result.record["start"] < size:
            return
        index += 1
