"""`embedpipe eval retrieval` on a tiny BEIR dataset with the tiny model."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.eval.embedding import EvalInputError
from embedpipe.eval.retrieval import load_beir, pick_configs

runner = CliRunner()
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_load_beir_crlf_qrels_and_subsets(beir_dir):
    data = load_beir(beir_dir)
    assert len(data.doc_ids) == 60
    assert data.query_ids == [f"q{i}" for i in range(8)]  # q8, q9 are not in the qrels
    assert data.qrels["q1"] == {"d5": 1, "d6": 1} and data.qrels["q0"] == {"d0": 1, "d1": 0}
    sub = load_beir(beir_dir, max_docs=12, max_queries=3)
    assert sub.query_ids == ["q0", "q1", "q2"]
    # judged docs of q0..q2 first (d0 d1 d5 d6 d10 d11), then corpus order up to 12
    assert set(sub.doc_ids) >= {"d0", "d1", "d5", "d6", "d10", "d11"} and len(sub.doc_ids) == 12


def test_cli_rows_json_csv_plot_and_cache(beir_dir, tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    try:
        import matplotlib  # noqa: F401
        plot = ["--plot", out_png]
    except ImportError:
        plot = []
    args = ["eval", "retrieval", beir_dir, "--model", tiny_gguf, "--backend", "numpy", "--dims", "64,32",
            "--indexes", "brute,hnsw", "--json", out_json, "--csv", out_csv, "--cache-dir", cache,
            "--no-progress", *plot]
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    rows = json.loads(out_json.read_text())
    assert len(rows) == 2 * 3  # dims x (brute fp32, brute int8, hnsw int8)
    keys = set(rows[0])
    assert {"dim", "quant", "index", "config", *METRICS, "queries", "docs"} <= keys
    for r in rows:
        assert set(r) == keys and r["queries"] == 8 and r["docs"] == 60
        assert all(0.0 <= r[m] <= 1.0 for m in METRICS)
    # exact search at full width equals a direct Embedder.encode + numpy + metrics computation
    top = [r for r in rows if r["config"] == "brute-fp32" and r["dim"] == 64][0]
    want = _direct_metrics(beir_dir, tiny_gguf)
    assert [top[m] for m in METRICS] == pytest.approx([want[m] for m in METRICS], abs=1e-4)
    with open(out_csv, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    header = [ln for ln in res.stdout.splitlines() if ln.startswith("| dim")][0]
    assert all(f" {m} " in header for m in METRICS)
    if plot:
        assert out_png.read_bytes()[:4] == b"\x89PNG"
    # second run: every vector comes from the ingest cache, same figures
    rerun = tmp_path / "r2.json"
    res2 = _invoke(*[a if a != out_json else rerun for a in args])
    assert res2.exit_code == 0
    again = json.loads(rerun.read_text())
    assert [r["ndcg@10"] for r in again] == [r["ndcg@10"] for r in rows]
    import sqlite3

    n = sqlite3.connect(cache / "embeddings.sqlite").execute("select count(*) from embeddings").fetchone()[0]
    assert n == 60 + 8


def _direct_metrics(beir_dir, tiny_gguf):
    from embedpipe.eval.metrics import evaluate
    from embedpipe.runtime.embedder import Embedder

    data = load_beir(beir_dir)
    emb = Embedder.load(tiny_gguf, backend="numpy")
    docs = emb.encode(data.texts, task="document", titles=data.titles, dim=64)
    queries = emb.encode(data.queries, task="query", dim=64)
    scores = queries @ docs.T
    run = {q: {d: float(s) for d, s in zip(data.doc_ids, row) if d != q}
           for q, row in zip(data.query_ids, scores)}
    return evaluate(data.qrels, run)


def test_bad_dataset_and_config(tmp_path, beir_dir):
    with pytest.raises(EvalInputError, match="corpus.jsonl"):
        load_beir(tmp_path)
    with pytest.raises(EvalInputError, match="unknown index configuration"):
        pick_configs(("flat",))
    assert [c.name for c in pick_configs(("annoy",))] == ["annoy-fp32-n_trees50-search_k10000"]
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\nnot json\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (bad / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(EvalInputError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q7\td1\t1\n")
    with pytest.raises(EvalInputError, match="judged query id"):
        load_beir(bad)
