"""Parts: fixed input-row ranges [k·part_rows, (k+1)·part_rows), each written as one output file.

Windows inside a part are fixed row ranges too (every `sort_window` rows from the part start),
whatever batch sizes the reader happens to yield, so a resumed or distributed run forms exactly
the same model batches as a clean run and produces bit-identical vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from embedpipe.pipeline.processor import Stats, WindowProcessor
from embedpipe.pipeline.writer import PartWriter

Batch = tuple[int, Path, pa.RecordBatch]


class RowFeeder:
    """Hands out exact row counts from a stream of (first_row, path, batch)."""

    def __init__(self, batches: Iterator[Batch]):
        self._it = batches
        self._pending: Batch | None = None

    def _next(self) -> Batch | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        return next(self._it, None)

    def take(self, n: int) -> list[Batch]:
        out: list[Batch] = []
        while n > 0:
            item = self._next()
            if item is None:
                break
            first, path, batch = item
            if batch.num_rows > n:
                self._pending = (first + n, path, batch.slice(n))
                batch = batch.slice(0, n)
            if batch.num_rows:
                out.append((first, path, batch))
            n -= batch.num_rows
        return out

    def skip(self, n: int) -> int:
        skipped = 0
        while skipped < n:
            got = self.take(min(n - skipped, 65536))
            if not got:
                break
            skipped += sum(b.num_rows for _, _, b in got)
        return skipped

    def at_end(self) -> bool:
        if self._pending is None:
            self._pending = next(self._it, None)
        return self._pending is None


@dataclass
class PartResult:
    record: dict  # manifest fields: index, start, end, file, stats
    skipped: list[dict]
    stats: Stats


def run_part(
    processor: WindowProcessor,
    out_dir: Path,
    index: int,
    start: int,
    feeder: RowFeeder,
    part_rows: int,
    on_window: Callable[[Stats], None] | None = None,
) -> PartResult:
    """Process rows [start, start + part_rows) (fewer at the end of input) into part `index`."""
    writer = PartWriter(out_dir, index, processor.schema)
    stats = Stats()
    skipped: list[dict] = []
    done = 0
    try:
        while done < part_rows:
            window = feeder.take(min(processor.cfg.sort_window, part_rows - done))
            if not window:
                break
            table, bad, wstats = processor.process(window)
            writer.write(table)
            skipped.extend(bad)
            stats.add(wstats)
            done += wstats.counts["rows_in"]
            if on_window is not None:
                on_window(wstats)
        final = writer.commit()
    except BaseException:
        writer.abort()
        raise
    record = {
        "index": index,
        "start": start,
        "end": start + done,
        "file": final.name,
        "bytes": final.stat().st_size,
        **stats.to_dict(),
    }
    return PartResult(record, skipped, stats)
