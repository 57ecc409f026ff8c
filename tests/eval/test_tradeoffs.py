"""`embedpipe eval tradeoffs` on tiny-model embeddings: table, JSON, CSV, plot, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.eval.tradeoffs import METRIC_COLUMNS, Plan, exact_topk, run_tradeoffs

runner = CliRunner()
KEYS = {"dim", "quant", "index", "n_trees", "search_k", "m", "ef_search", *METRIC_COLUMNS}


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_table_json_csv_plot(emb_dir, tiny_gguf, eval_cache, tmp_path):
    out_json, out_csv, out_png = tmp_path / "t.json", tmp_path / "t.csv", tmp_path / "t.png"
    plot = [] if _no_matplotlib() else ["--plot", out_png]
    res = _invoke("eval", "tradeoffs", emb_dir, "--n-queries", 12, "--dims", "64,32",
                  "--json", out_json, "--csv", out_csv, "--cache-dir", eval_cache,
                  "--backend", "numpy", "--no-progress", *plot)
    assert res.exit_code == 0, res.output
    rows = json.loads(out_json.read_text())
    # 2 dims x (brute 3 quants + annoy 2 trees x 2 search_k + hnsw 2 quants x 3 ef)
    assert len(rows) == 2 * (3 + 4 + 6)
    for row in rows:
        assert set(row) == KEYS
        assert 0.0 <= row["recall@10"] <= 1.0 and 0.0 <= row["recall@10_same_dim"] <= 1.0
        assert row["size_bytes"] > 0 and row["latency_ms_p95"] >= 0
    exact = [r for r in rows if r["index"] == "brute" and r["quant"] == "fp32"]
    assert {r["dim"]: r["recall@10_same_dim"] for r in exact} == {64: 1.0, 32: 1.0}
    assert [r for r in exact if r["dim"] == 64][0]["recall@10"] == 1.0
    with open(out_csv, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows) and set(csv_rows[0]) == KEYS
    assert float(csv_rows[0]["recall@10"]) == rows[0]["recall@10"]
    table = [ln for ln in res.stdout.splitlines() if ln.startswith("|")]
    assert len(table) == len(rows) + 2 and "recall@10_same_dim" in table[0]
    if plot:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _no_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def test_queries_file_and_restrictions(emb_dir, tiny_gguf, eval_cache, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"text": "apple river"}\n{"text": "rocket train boat"}\n\n{"text": "melon"}\n')
    out = tmp_path / "r.json"
    res = _invoke("eval", "tradeoffs", emb_dir, "--queries", q, "--dims", "64", "--quants", "int8",
                  "--indexes", "brute,hnsw", "--json", out, "--cache-dir", eval_cache,
                  "--backend", "numpy", "--no-progress")
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert {(r["index"], r["quant"]) for r in rows} == {("brute", "int8"), ("hnsw", "int8")}
    assert len(rows) == 1 + 3


def test_no_text_and_no_manifest_requires_queries(emb_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for part in emb_dir.glob("part-*.parquet"):
        shutil.copy(part, bare / part.name)
    res = runner.invoke(app, ["eval", "tradeoffs", str(bare), "--dims", "64", "--no-progress"])
    assert res.exit_code == 1
    assert "no text column" in str(res.exception) and "--queries" in str(res.exception)


def test_bad_dims_and_quant(emb_dir):
    res = runner.invoke(app, ["eval", "tradeoffs", str(emb_dir), "--dims", "768"])
    assert res.exit_code == 1 and "64-d" in str(res.exception)
    res = runner.invoke(app, ["eval", "tradeoffs", str(emb_dir), "--quants", "int4"])
    assert res.exit_code == 1 and "int4" in str(res.exception)


def test_recall_is_measured_against_independent_exact_search():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    q = x[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    rows = run_tradeoffs(x, q, Plan(dims=(32, 8), quants=("fp32", "int8"), indexes=("brute", "annoy")),
                         progress=False)
    by = {(r["dim"], r["quant"], r["index"], r["n_trees"], r["search_k"]): r for r in rows}
    assert by[(32, "fp32", "brute", None, None)]["recall@10"] == 1.0
    # dim 8 exact search disagrees with the 32-d truth: Matryoshka loss shows up in recall@10
    low = by[(8, "fp32", "brute", None, None)]
    assert low["recall@10_same_dim"] == 1.0 and low["recall@10"] < 0.9
    assert by[(32, "int8", "brute", None, None)]["recall@10"] >= 0.9
    # few trees + default search_k is approximate on random data
    assert by[(32, "fp32", "annoy", 10, -1)]["recall@10"] < 1.0
    rows_exact = exact_topk(x, q, 32, 10)
    assert (rows_exact[:, 0] == np.arange(20)).mean() > 0.9


def test_query_sources(tmp_path, emb_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedpipe.eval.embedding import EvalInputError, read_query_file, sample_corpus_queries

    pq.write_table(pa.table({"text": ["a b", None, "c d", " "]}), tmp_path / "q.parquet")
    assert read_query_file(tmp_path / "q.parquet") == ["a b", "c d"]
    pq.write_table(pa.table({"query": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(EvalInputError, match="no 'text' column"):
        read_query_file(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(EvalInputError, match="bad.jsonl:2"):
        read_query_file(tmp_path / "bad.jsonl")
    # a kept text column is used directly, sampled without replacement, seeded
    cols = {"text": [f"t{i}" for i in range(50)]}
    a = sample_corpus_queries(tmp_path, list(range(50)), cols, 10, seed=1)
    assert len(set(a)) == 10 and set(a) <= set(cols["text"])
    assert a == sample_corpus_queries(tmp_path, list(range(50)), cols, 10, seed=1)
    # no text column: texts come from the source file named in the ingest manifest
    from embedpipe.pipeline.dataset import read_embeddings

    data = read_embeddings(emb_dir)
    got = sample_corpus_queries(emb_dir, data.ids, data.columns, 5)
    src = pq.read_table(next((emb_dir.parent).glob("corpus.parquet"))).column("text").to_pylist()
    assert len(got) == 5 and set(got) <= set(src)
