"""End to end on the tiny synthetic model: vectors equal Embedder.encode, order, ids, kept columns."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import EmbedpipeError
from tests.pipeline.conftest import make_texts


def vectors(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)


def test_vectors_match_encode_in_input_order(run, corpus, tiny_emb):
    summary, table = run(corpus, part_rows=37, sort_window=16, cache=False, keep=["doc", "year"])
    texts = pq.read_table(corpus).column("text").to_pylist()
    ref = tiny_emb.encode(texts, task="document")
    assert table.column("id").to_pylist() == list(range(len(texts)))
    assert table.column("doc").to_pylist() == [f"d{i}" for i in range(len(texts))]
    assert set(table.column("chunk").to_pylist()) == {0}
    np.testing.assert_allclose(vectors(table), ref, atol=2e-6)
    assert summary.rows_in == summary.rows_embedded == summary.output_rows == len(texts)
    assert summary.parts == 4  # 120 rows / 37 per part
    saved = json.loads((summary_path := (corpus.parent / "out0" / "_summary.json")).read_text())
    assert saved["output_rows"] == len(texts) and summary_path.exists()


def test_id_and_title_columns(run, tmp_path, tiny_emb):
    texts = make_texts(20, seed=3)
    titles = [f"title {i}" if i % 3 else None for i in range(20)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": texts, "key": [f"k{i}" for i in range(20)], "head": titles}), path)
    _, table = run(path, text_col="body", id_col="key", title_col="head", cache=False)
    assert table.column("id").to_pylist() == [f"k{i}" for i in range(20)]
    ref = tiny_emb.encode(texts, task="document", titles=titles)
    np.testing.assert_allclose(vectors(table), ref, atol=2e-6)


def test_title_needs_document_task(run, corpus):
    with pytest.raises(EmbedpipeError, match="document"):
        run(corpus, title_col="doc", task="query")


def test_query_task_and_dim_check(run, corpus, tiny_emb):
    _, table = run(corpus, task="query", cache=False)
    texts = pq.read_table(corpus).column("text").to_pylist()
    np.testing.assert_allclose(vectors(table), tiny_emb.encode(texts, task="query"), atol=2e-6)
    with pytest.raises(EmbedpipeError, match="dim"):
        run(corpus, dim=7)


def test_any_dim_ingests_a_width_the_model_does_not_offer(run, corpus, tiny_emb):
    _, table = run(corpus, dim=7, any_dim=True, cache=False)
    texts = pq.read_table(corpus).column("text").to_pylist()
    np.testing.assert_allclose(vectors(table), tiny_emb.encode(texts, task="document", dim=7, any_dim=True), atol=2e-6)


def test_missing_column_and_missing_file(run, corpus, tmp_path):
    with pytest.raises(EmbedpipeError, match="no column"):
        run(corpus, text_col="nope")
    with pytest.raises(EmbedpipeError, match="no such file"):
        run(tmp_path / "missing.parquet")


def test_output_dir_not_ours_is_refused(run, corpus, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(EmbedpipeError, match="overwrite"):
        run(corpus, out=out)
    run(corpus, out=out, overwrite=True)
    assert (out / "precious.txt").exists()


def test_same_model_calls_as_encode(run, corpus, tiny_emb, monkeypatch):
    """The pipeline adds no model work: the forward passes are call-for-call those of encode."""
    calls: list[tuple[int, ...]] = []
    real = tiny_emb.model.embed
    monkeypatch.setattr(tiny_emb.model, "embed", lambda seqs: calls.append(tuple(map(len, seqs))) or real(seqs))
    tiny_emb.encode(pq.read_table(corpus).column("text").to_pylist(), task="document")
    by_encode = list(calls)
    calls.clear()
    run(corpus, cache=False)
    assert calls == by_encode


def test_progress_redraws_between_windows(run, corpus, capsys, monkeypatch):
    """One window of 120 rows, 8-row model batches: the bar must show in-window progress
    (long documents make a window minutes long) before the window's rows are counted."""
    from embedpipe.pipeline import progress

    monkeypatch.setattr(progress, "REDRAW_S", 0.0)
    run(corpus, part_rows=500, sort_window=500, batch_rows=8, cache=False, progress=True)
    err = capsys.readouterr().err
    assert "window=8/120 seq" in err and "window=112/120 seq" in err
    assert "120/120" in err
