"""IR metrics against hand-computed values (BEIR / trec_eval definitions)."""

from __future__ import annotations

import math

import pytest

from embedpipe.eval.metrics import QrelsError, evaluate, mrr_at_k, ndcg_at_k, per_query, ranked, read_qrels, recall_at_k

L2 = math.log2


def test_ndcg_graded_hand_computed():
    judged = {"a": 2, "b": 1, "c": 0}
    # ranking: x (unjudged), a (2), b (1)
    dcg = 0 / L2(2) + 2 / L2(3) + 1 / L2(4)
    idcg = 2 / L2(2) + 1 / L2(3)
    assert ndcg_at_k(["x", "a", "b"], judged, 10) == pytest.approx(dcg / idcg)
    # cut at 2 drops b from DCG; IDCG@2 still has both
    assert ndcg_at_k(["x", "a", "b"], judged, 2) == pytest.approx((2 / L2(3)) / idcg)
    assert ndcg_at_k(["a", "b"], judged, 10) == pytest.approx(1.0)


def test_ideal_dcg_from_qrels_not_from_run():
    # relevant doc "z" never retrieved: IDCG counts it anyway
    judged = {"a": 1, "z": 1}
    assert ndcg_at_k(["a"], judged, 10) == pytest.approx(1 / (1 + 1 / L2(3)))


def test_ideal_dcg_is_cut_at_k():
    judged = {d: 1 for d in "abcdefghijkl"}  # 12 relevant docs, only 10 fit
    assert ndcg_at_k(list("abcdefghij"), judged, 10) == pytest.approx(1.0)


def test_recall_and_mrr():
    judged = {"a": 1, "b": 3, "c": 1, "n": 0}
    ranking = ["n", "x", "b", "y", "a"]
    assert recall_at_k(ranking, judged, 3) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, judged, 100) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, judged, 10) == pytest.approx(1 / 3)  # grade 0 "n" is not relevant
    assert mrr_at_k(ranking, judged, 2) == 0.0


def test_ties_broken_by_doc_id_descending():
    # trec_eval: equal scores -> larger doc id (string order) first
    assert ranked({"a": 0.5, "c": 0.5, "b": 0.9, "d": 0.1}) == ["b", "c", "a", "d"]
    assert ranked({"10": 1.0, "9": 1.0}) == ["9", "10"]  # string order, not numeric
    judged = {"a": 1}
    # "a" and "c" tie; "c" ranks first so a is at rank 2
    assert mrr_at_k(ranked({"a": 0.5, "c": 0.5}), judged, 10) == pytest.approx(0.5)
    assert ranked(["c", "a"]) == ["c", "a"]  # a list is taken as already ranked


def test_queries_without_relevant_docs_are_excluded_from_mean():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {}}
    run = {"q1": {"a": 1.0, "x": 0.5}, "q2": {"b": 1.0}, "q3": {"c": 1.0}, "q4": {"d": 1.0}}
    res = evaluate(qrels, run)
    assert res["queries"] == 1
    assert res["ndcg@10"] == pytest.approx(1.0)
    assert set(per_query(qrels, run)) == {"q1"}


def test_judged_query_missing_from_run_scores_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    res = evaluate(qrels, {"q1": {"a": 1.0}})
    assert res["queries"] == 2
    assert res["ndcg@10"] == pytest.approx(0.5)
    assert res["mrr@10"] == pytest.approx(0.5)


def test_mean_over_queries_hand_computed():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}}
    run = {"q1": ["b", "x"], "q2": ["x", "y", "c"]}
    res = evaluate(qrels, run, cuts=[("ndcg", 10), ("recall", 1), ("mrr", 10)])
    q1_ndcg = 1 / (1 + 1 / L2(3))
    q2_ndcg = (2 / L2(4)) / 2
    assert res["ndcg@10"] == pytest.approx((q1_ndcg + q2_ndcg) / 2)
    assert res["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert res["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)


def test_read_qrels_crlf_header_blank_lines(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_bytes(b"query-id\tcorpus-id\tscore\r\n1\t10\t1\r\n1\t11\t2\r\n\r\n2\t10\t0\r\n")
    assert read_qrels(p) == {"1": {"10": 1, "11": 2}, "2": {"10": 0}}
    p.write_bytes(b"1\t10\t1\n3\t12\t1")  # no header, LF, no final newline
    assert read_qrels(p) == {"1": {"10": 1}, "3": {"12": 1}}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"query-id\tcorpus-id\tscore\n1\t10\n", ":2: expected 3"),
        (b"1\t10\tx\n", "not an integer"),
        (b"1\t10\t\xff\n", "not UTF-8"),
    ],
)
def test_read_qrels_bad_lines(tmp_path, content, message):
    p = tmp_path / "bad.tsv"
    p.write_bytes(content)
    with pytest.raises(QrelsError, match=message):
        read_qrels(p)
    with pytest.raises(QrelsError, match="cannot read"):
        read_qrels(tmp_path / "missing.tsv")
