"""tqdm progress over input rows with rows/s (tqdm's rate), tokens/s and ETA (when the row count is known)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total_rows: int | None, done_rows: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._tokens = 0
        self._bar = tqdm(total=total_rows, initial=done_rows, unit="row", desc="ingest", file=sys.stderr,
                         disable=not enabled, dynamic_ncols=True, smoothing=0.1)

    def update(self, stats) -> None:
        self._tokens += stats.counts["tokens"]
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self._bar.set_postfix(tok_s=f"{self._tokens / elapsed:.0f}", vec=stats.counts["output_rows"], refresh=False)
        self._bar.update(stats.counts["rows_in"])

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
