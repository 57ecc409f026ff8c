"""`embedpipe eval tradeoffs` on tiny-model embeddings: table, JSON, CSV, plot, errors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.eval.tradeoffs import METRIC_COLUMNS, Plan, exact_topk, run_tradeoffs

runner = CliRunner()
KEYS = {"dim", "quant", "index", "n_trees", "search_k", "m", "ef_search", *METRIC_COLUMNS}


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_recall_is_measured_against_independent_exact_search():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    q = x[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    rows = run_tradeoffs(x, q, Plan(dims=(32, 8), quants=("fp32", "int8"), indexes=("brute", "annoy")), progress=False)
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

    pq.write_table(pa.table({"text": ["a b", "c d"]}), tmp_path / "q.parquet")
    assert read_query_file(tmp_path / "q.parquet") == ["a b", "c d"]
    # a null or blank row is refused by row, as a blank JSONL line is by line (it was dropped)
    for bad in (None, " "):
        pq.write_table(pa.table({"text": pa.array(["a b", bad], pa.string())}), tmp_path / "blank.parquet")
        with pytest.raises(EvalInputError, match="blank.parquet: row 1: the query is empty"):
            read_query_file(tmp_path / "blank.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(EvalInputError, match="holds int64, not strings"):
        read_query_file(tmp_path / "ints.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(EvalInputError, match="not a readable Parquet file"):
        read_query_file(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"query": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(EvalInputError, match="no 'text' column"):
        read_query_file(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(EvalInputError, match="bad.jsonl:2"):
        read_query_file(tmp_path / "bad.jsonl")
    # the lines `search -i` reads: a string, {"query": …} or {"text": …}
    (tmp_path / "q.jsonl").write_text('"a b"\n{"query": "c d"}\n{"text": "e f"}\n')
    assert read_query_file(tmp_path / "q.jsonl") == ["a b", "c d", "e f"]
    (tmp_path / "blank.jsonl").write_text('{"query": "a"}\n{"query": " "}\n')
    with pytest.raises(EvalInputError, match="blank.jsonl:2: the query is empty"):
        read_query_file(tmp_path / "blank.jsonl")
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


def test_unsampleable_corpus_hint_names_the_queries_argument(tmp_path):
    from embedpipe.eval.embedding import EvalInputError, sample_corpus_queries

    with pytest.raises(EvalInputError) as info:  # no text column, no ingest manifest
        sample_corpus_queries(tmp_path, [1, 2], {}, 2)
    assert "pass queries_file='F.jsonl|F.parquet'" in str(info.value) and "--" not in str(info.value)
    assert "pass --queries F.jsonl|F.parquet" in info.value.cli_message()


def test_a_repeated_list_value_is_swept_once():
    from embedpipe.eval.tradeoffs import parse_list

    assert parse_list("256, 768,256,768", int, ()) == (256, 768)
    assert parse_list("hnsw,brute,hnsw", str, ()) == ("hnsw", "brute")
    assert parse_list(None, str, ("a",)) == ("a",)
