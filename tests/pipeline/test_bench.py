"""`embedpipe bench ingest` (`pipeline.bench`): its arguments are checked before any work."""

from __future__ import annotations

import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.bench import run_ingest_bench, run_rss_bench


@pytest.mark.parametrize("n, repeats, match", [(0, 1, "n must be >= 1, got 0"), (4, 0, "repeats must be >= 1")])
def test_no_texts_or_no_runs_is_refused_before_the_model_loads(tmp_path, n, repeats, match):
    """--n 0 reported "11480.81 % of encode" over no texts."""
    with pytest.raises(EmbedpipeError, match=match):
        run_ingest_bench(str(tmp_path / "never-opened.gguf"), None, n, "document", None, "numpy", 1, repeats)


def test_rss_rows_must_be_positive(tmp_path):
    with pytest.raises(EmbedpipeError, match="rows must be >= 1, got -1"):
        run_rss_bench(str(tmp_path / "never-opened.gguf"), -1, 10)


def test_a_width_the_model_does_not_offer_is_refused_before_any_ingest(tiny_gguf, tmp_path, monkeypatch):
    """The dim is checked once the model is loaded, naming any_dim, before a text is written."""

    def refuse(*_args, **_kw):
        raise AssertionError("texts were made")

    monkeypatch.setattr("embedpipe.pipeline.bench.load_texts", refuse)
    with pytest.raises(EmbedpipeError, match="dim 32 is not offered by this model.*any_dim=True"):
        run_ingest_bench(str(tiny_gguf), None, 4, "document", 32, "numpy", 1, 1)
