"""Ingest on the corpora the fuzzer found mishandled: duplicate ids, non-object and non-UTF-8
JSON lines, empty inputs of every format, id values that are not text."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import EmbedpipeError


@pytest.fixture
def dup_corpus(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a", "c", "b"], "text": ["one", "two", "three", "four", "five"]}), path)
    return path


def test_duplicate_ids_warn_by_default(run, dup_corpus, tmp_path):
    out = tmp_path / "o"
    summary, table = run(dup_corpus, out=out, id_col="id", cache=False)
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert summary.skipped_reasons == {"duplicate_id": 2}
    assert "duplicate_id 2" in summary.format()
    listed = [json.loads(line) for line in (out / "_skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["row"], s["reason"]) for s in listed] == [("a", 2, "duplicate_id"), ("b", 4, "duplicate_id")]


def test_duplicate_ids_error_and_keep(run, dup_corpus):
    with pytest.raises(EmbedpipeError, match="row 2: id a appeared in an earlier row"):
        run(dup_corpus, id_col="id", cache=False, on_duplicate_id="error")
    summary, table = run(dup_corpus, id_col="id", cache=False, on_duplicate_id="keep")
    assert table.column("id").to_pylist() == ["a", "b", "a", "c", "b"] and summary.skipped_rows == 0


def test_duplicates_across_parts_and_a_bad_first_occurrence(run, tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1, 2, 1, 3, 2, 4], "text": ["", "b", "c", "d", "e", "f"]}), path)
    summary, table = run(path, id_col="id", cache=False, part_rows=2)
    # row 0 (id 1) is empty, so row 2 is the first *good* id 1; row 4 repeats id 2 from part 0
    assert table.column("id").to_pylist() == [2, 1, 3, 4]
    assert summary.skipped_reasons == {"empty": 1, "duplicate_id": 1}


def test_jsonl_reasons(run, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "fine"}\n[1, 2]\n"just a string"\n{"text": "caf\xff"}\n{"text": oops}\n')
    out = tmp_path / "o"
    summary, table = run(path, out=out, cache=False)
    assert table.num_rows == 1
    assert summary.skipped_reasons == {"not_an_object": 2, "invalid_utf8": 1, "invalid_json": 1}


@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n\n  \n"),
        ("empty.csv", b""),
        ("header.csv", b"text\n"),
        ("empty.parquet", b""),
        ("empty.arrow", b""),
    ],
)
def test_empty_inputs_behave_alike(run, tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    summary, table = run(path, cache=False)
    assert summary.rows_in == 0 and table.num_rows == 0


def test_zero_row_parquet_is_like_the_others(run, tmp_path):
    path = tmp_path / "z.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    summary, table = run(path, cache=False)
    assert summary.rows_in == 0 and table.num_rows == 0


def test_binary_ids_that_are_not_utf8_are_skipped_rows(run, tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": pa.array([b"ok", b"\xff\xfe", None], pa.binary()), "text": ["x", "y", "z"]}), path)
    summary, table = run(path, id_col="id", cache=False)
    assert table.column("id").to_pylist() == ["ok"]
    assert summary.skipped_reasons == {"invalid_id": 1, "null_id": 1}


def test_column_names_that_are_not_utf8(run, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,\x95ext\na,hello\n")
    with pytest.raises(EmbedpipeError, match="cannot read the columns"):
        run(path, cache=False)
