"""Peak RSS stays flat in corpus size: 10x the rows -> less than 10 % more memory."""

from __future__ import annotations

import pytest

from embedpipe.pipeline.bench import run_rss_bench


@pytest.mark.slow
def test_peak_rss_flat_in_rows(tiny_gguf):
    result = run_rss_bench(str(tiny_gguf), 1500, 10, backend="numpy", part_rows=1000, sort_window=256)
    assert result["growth_pct"] < 10, result
