"""`embedpipe eval tradeoffs` and `eval retrieval` on tiny-model data: tables, JSON, CSV, plots,
the embedding cache across reruns, and errors."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.eval.retrieval import load_beir
from embedpipe.eval.tradeoffs import METRIC_COLUMNS

runner = CliRunner()
KEYS = {"dim", "quant", "index", "n_trees", "search_k", "m", "ef_search", *METRIC_COLUMNS}
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_table_json_csv_plot(emb_dir, tiny_gguf, eval_cache, tmp_path):
    out_json, out_csv, out_png = tmp_path / "t.json", tmp_path / "t.csv", tmp_path / "t.png"
    plot = [] if _no_matplotlib() else ["-o", out_png]
    res = _invoke(
        "eval",
        "tradeoffs",
        emb_dir,
        "--n-queries",
        12,
        "--dims",
        "64,32",
        "--any-dim",
        "-o",
        out_json,
        "-o",
        out_csv,
        "--cache-dir",
        eval_cache,
        "--backend",
        "numpy",
        "--no-progress",
        *plot,
    )
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
    res = _invoke(
        "eval",
        "tradeoffs",
        emb_dir,
        "--queries",
        q,
        "--dims",
        "64",
        "--quants",
        "int8",
        "--indexes",
        "brute,hnsw",
        "-o",
        out,
        "--cache-dir",
        eval_cache,
        "--backend",
        "numpy",
        "--no-progress",
    )
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
    # the CLI prints the flag (`cli_message`), the API names the argument
    assert "no text column" in str(res.exception) and "pass --queries F.jsonl" in res.exception.cli_message()


def test_bad_dims_and_quant(emb_dir):
    res = runner.invoke(app, ["eval", "tradeoffs", str(emb_dir), "--dims", "768"])
    # wider than the stored vectors: refused before the model is opened, and said so
    assert res.exit_code == 1 and "dims holds 768: the stored vectors have 64 components" in str(res.exception)
    res = runner.invoke(app, ["eval", "tradeoffs", str(emb_dir), "--quants", "int4"])
    assert res.exit_code == 1 and "int4" in str(res.exception)


def test_cli_rows_json_csv_plot_and_cache(beir_dir, tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    try:
        import matplotlib  # noqa: F401

        plot = ["-o", out_png]
    except ImportError:
        plot = []
    args = [
        "eval",
        "retrieval",
        beir_dir,
        "--model",
        tiny_gguf,
        "--backend",
        "numpy",
        "--dims",
        "64,32",
        "--any-dim",
        "--indexes",
        "brute,hnsw",
        "-o",
        out_json,
        "-o",
        out_csv,
        "--cache-dir",
        cache,
        "--no-progress",
        *plot,
    ]
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
    run = {q: {d: float(s) for d, s in zip(data.doc_ids, row) if d != q} for q, row in zip(data.query_ids, scores)}
    return evaluate(data.qrels, run)


def test_retrieval_dims_are_checked_like_every_dim(beir_dir, tiny_gguf):
    from embedpipe.cli.errors import run_cli

    args = ["eval", "retrieval", str(beir_dir), "-m", str(tiny_gguf), "--backend", "numpy", "--no-progress"]
    assert run_cli(app, [*args, "--dims", "32"]) == 1
    assert run_cli(app, [*args, "--dims", "65", "--any-dim"]) == 1


def test_tradeoffs_dims_are_checked_like_every_dim(emb_dir, eval_cache, capsys):
    """Only the model's Matryoshka widths unless --any-dim, named as the flag on the CLI."""
    from embedpipe.cli.errors import run_cli

    args = ["eval", "tradeoffs", str(emb_dir), "--n-queries", "5", "--quants", "fp32", "--indexes", "brute"]
    args += ["--cache-dir", str(eval_cache), "--backend", "numpy", "--no-progress"]
    assert run_cli(app, [*args, "--dims", "32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --dims 32 is not offered by this model: choose one of 64, or pass --any-dim")
    assert run_cli(app, [*args, "--dims", "32", "--any-dim", "--json"]) == 0
    assert {row["dim"] for row in json.loads(capsys.readouterr().out)} == {32}


@pytest.mark.parametrize(
    "extra, code, needle",
    [
        (["-o", "{tmp}/rows.txt"], 1, "unknown output extension"),
        (["-o", "{tmp}"], 1, "unknown output extension"),
        (["-o", "{tmp}/dir.json"], 1, "is a directory"),
        (["-o", "{tmp}/missing/rows.json"], 1, "no such directory"),
        (["--junit", "{tmp}/gate.xml"], 2, "add --min-recall"),
        (["--gate-json", "{tmp}/gate.json"], 2, "add --min-recall"),
        (["--min-recall", "0.5", "--junit", "{tmp}/missing/gate.xml"], 1, "no such directory"),
        (["--seed", "-5"], 2, "--seed"),
    ],
)
def test_tradeoffs_options_are_checked_before_the_sweep(
    emb_dir, eval_cache, tmp_path, capsys, monkeypatch, extra, code, needle
):
    """Bad output paths failed after the whole sweep (or wrote nothing with exit 0, for gate
    files without --min-recall); a negative seed was a traceback."""
    from embedpipe.cli.errors import run_cli
    from embedpipe.eval import tradeoffs

    (tmp_path / "dir.json").mkdir()
    monkeypatch.setattr(tradeoffs, "run_tradeoffs", lambda *a, **k: pytest.fail("the sweep ran"))
    args = ["eval", "tradeoffs", str(emb_dir), "--n-queries", "5", "--cache-dir", str(eval_cache), "--no-progress"]
    assert run_cli(app, [*args, *(a.format(tmp=tmp_path) for a in extra)]) == code
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and needle in err and "Traceback" not in err, err


def test_retrieval_checks_its_outputs_before_embedding(beir_dir, tmp_path, capsys, monkeypatch):
    from embedpipe.cli.errors import run_cli
    from embedpipe.eval import retrieval

    monkeypatch.setattr(retrieval, "load_beir", lambda *a, **k: pytest.fail("the dataset was read"))
    assert run_cli(app, ["eval", "retrieval", str(beir_dir), "-o", str(tmp_path / "no" / "r.csv")]) == 1
    assert "no such directory" in capsys.readouterr().err
