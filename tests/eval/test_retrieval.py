"""`embedpipe eval retrieval` on a tiny BEIR dataset with the tiny model."""

from __future__ import annotations

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


def test_nothing_to_score_and_subsets_below_one_are_refused(tmp_path, beir_dir):
    """A subset of 0 used to mean the whole dataset, and qrels grading nothing above 0 scored
    zeros for no queries; a judged document the corpus lacks is named (BEIR counts it as
    relevant and never retrieved)."""
    for kwargs in ({"max_docs": 0}, {"max_queries": 0}, {"max_docs": -1}):
        with pytest.raises(EvalInputError, match="must be at least 1"):
            load_beir(beir_dir, **kwargs)
    for flag in ("--max-docs", "--max-queries"):
        result = runner.invoke(app, ["eval", "retrieval", str(beir_dir), flag, "0"])
        assert result.exit_code != 0 and "greater than or equal to 1" in result.output
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "bread"}\n{"_id": "d2", "text": "cats"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "baking"}\n')
    (root / "qrels" / "test.tsv").write_text("q1\td1\t0\n")
    with pytest.raises(EvalInputError, match="no query has a document graded above 0"):
        load_beir(root)
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\nq1\tgone\t2\n")
    assert load_beir(root).unjudgeable == ["gone"] and load_beir(beir_dir).unjudgeable == []


def test_titles_go_before_the_text_for_a_model_without_a_title_field(beir_dir, tiny_gguf):
    """MiniLM and MPNet (prompt convention "none") refused every BEIR corpus with titles."""
    from embedpipe.eval.retrieval import document_inputs, run_retrieval
    from embedpipe.runtime.embedder import Embedder

    data = load_beir(beir_dir)
    texts, titles = document_inputs(data, takes_titles=False)
    assert titles is None and texts[1] == f"{data.titles[1]} {data.texts[1]}" and texts[0] == data.texts[0]
    assert document_inputs(data, takes_titles=True) == (data.texts, data.titles)
    emb = Embedder.load(tiny_gguf, backend="numpy")
    emb.prompts = "none"
    (row,) = run_retrieval(data, emb, (emb.dims[0],), pick_configs(("brute-fp32",)), progress=False)
    assert row["queries"] == 8 and 0 <= row["ndcg@10"] <= 1


def test_a_document_with_only_a_title_is_embedded_as_its_title(tmp_path, tiny_gguf):
    """It was embedded as "title: X | text: X"; the sentence-transformers reference has "title: X | text: "."""
    from embedpipe.eval.embedding import embed_texts
    from embedpipe.runtime.embedder import Embedder

    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "Bread", "text": ""}\n{"_id": "d2", "text": "cats"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "baking"}\n')
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    data = load_beir(root)
    assert data.texts == ["", "cats"] and data.titles == ["Bread", ""]
    emb = Embedder.load(tiny_gguf, backend="numpy")
    got = embed_texts(emb, data.texts[:1], "document", titles=data.titles[:1])
    want = emb.encode(["title: Bread | text: "], task="none")
    assert float(got[0] @ want[0]) > 0.99999
