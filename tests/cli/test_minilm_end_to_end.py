"""`make demo`'s path with `--model all-minilm-l6-v2`: ingest -> build-index -> search -> eval
tradeoffs, on the bundled corpus subset, through the CLI (real model, pulled on first use)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.indexes import load_index
from embedpipe.runtime.embedder import Embedder

pytestmark = pytest.mark.model
runner = CliRunner()
CORPUS = [
    "save parking spot with location and notes",
    "weather forecast for the week",
    "split the bill with friends",
    "track calories and water intake",
    "translate a menu with the camera",
    "find a dog walker nearby",
    "scan receipts into expense reports",
    "practice piano scales daily",
    "book a table at a restaurant",
    "record a voice memo while driving",
    "share a grocery list with family",
    "measure a room with augmented reality",
] * 4


def _run(*args: str):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_ingest_index_search_tradeoffs(tmp_path) -> None:
    import pyarrow as pa

    src = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": CORPUS, "name": [f"app{i}" for i in range(len(CORPUS))]}), src)
    emb_dir, idx = tmp_path / "emb", tmp_path / "brute.idx"
    _run(
        "ingest",
        str(src),
        "-o",
        str(emb_dir),
        "--task",
        "document",
        "--text-col",
        "text",
        "--keep",
        "name",
        "--model",
        "all-minilm-l6-v2",
        "--no-progress",
    )
    table = pq.read_table(min(emb_dir.glob("*.parquet")))
    assert table.num_rows > 0 and len(table.column("embedding")[0]) == 384
    _run("build-index", str(emb_dir), "--type", "brute", "--quant", "int8", "-o", str(idx))
    ix = load_index(idx)
    emb = Embedder.load("all-minilm-l6-v2")
    assert ix.dim == 384 and ix.meta.model_sha256 == emb.model_sha256
    out = _run("search", str(idx), "save parking spot with location", "-k", "3", "--json")
    hits = json.loads(out.splitlines()[0])["results"]
    assert hits[0]["name"] in {f"app{i}" for i in range(0, len(CORPUS), 12)}
    report = tmp_path / "tradeoffs.json"
    _run(
        "eval",
        "tradeoffs",
        str(emb_dir),
        "--n-queries",
        "8",
        "--indexes",
        "brute,hnsw",
        "--quants",
        "fp32,int8",
        "-o",
        str(report),
        "--no-progress",
    )
    rows = json.loads(report.read_text())
    assert rows and {r["dim"] for r in rows} == {384}
