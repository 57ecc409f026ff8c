"""tqdm progress over input rows with rows/s (tqdm's rate), tokens/s and ETA (when the row count is known)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from embedpipe.pipeline.processor import Stats

REDRAW_S = 1.0  # at most one in-window redraw per this many seconds


class Progress:
    def __init__(self, total_rows: int | None, done_rows: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._tokens = 0
        self._inflight = 0
        self._last_draw = 0.0
        self._bar = tqdm(
            total=total_rows,
            initial=done_rows,
            unit="row",
            desc="ingest",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def update(self, stats: Stats) -> None:
        """A window of rows is done (rows advance only here: a row is done when written)."""
        self._tokens += stats.counts["tokens"]
        self._inflight = 0
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self._bar.set_postfix(tok_s=f"{self._tokens / elapsed:.0f}", vec=stats.counts["output_rows"], refresh=False)
        self._bar.update(stats.counts["rows_in"])

    def batch(self, done: int, total: int, tokens: int) -> None:
        """A model batch inside the current window is done: keep the bar alive between windows,
        which on long documents are minutes apart (at most one redraw per second)."""
        self._inflight += tokens
        now = time.perf_counter()
        if not self.enabled or now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        rate = (self._tokens + self._inflight) / max(now - self._t0, 1e-9)
        self._bar.set_postfix(tok_s=f"{rate:.0f}", window=f"{done}/{total} seq", refresh=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
