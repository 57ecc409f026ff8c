"""--long chunk/truncate/error and bad-row policies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import EmbedpipeError, InputTooLongError
from tests.pipeline.conftest import make_texts
from tests.pipeline.test_ingest_basic import vectors

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)


@pytest.fixture
def mixed(tmp_path):
    texts = make_texts(10, seed=1, max_words=2) + [LONG] + make_texts(5, seed=2, max_words=2)
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"text": texts}), path)
    return path, texts


def test_chunk_windows_cover_text_with_overlap(run, mixed, tiny_emb):
    path, texts = mixed
    summary, table = run(path, max_tokens=40, chunk_overlap=8, cache=False)
    rows = table.to_pylist()
    long_rows = [r for r in rows if r["id"] == 10]
    n_text = len(tiny_emb.tokenizer.encode(LONG, add_special=False))
    assert len(long_rows) > 2 and [r["chunk"] for r in long_rows] == list(range(len(long_rows)))
    spans = [(r["token_start"], r["token_end"]) for r in long_rows]
    assert spans[0][0] == 0 and spans[-1][1] >= n_text - 2
    for (_s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 == e0 - 8 and e1 > e0  # 8 tokens of overlap, progress every step
    prompt = len(tiny_emb.tokenizer.encode("title: none | text: ", add_special=False))
    assert all(e - s <= 40 - 2 - prompt + 1 for s, e in spans)
    assert summary.chunked_rows == 1 and summary.output_rows == 15 + len(long_rows)
    # other rows untouched and in order
    assert [r["id"] for r in rows if r["id"] != 10] == [i for i in range(16) if i != 10]


def test_chunk_zero_equals_truncation(run, mixed):
    path, _ = mixed
    s_chunk, chunked = run(path, max_tokens=40, cache=False)
    s_trunc, truncated = run(path, max_tokens=40, long="truncate", cache=False)
    c0 = chunked.filter(pa.compute.equal(chunked.column("chunk"), 0))
    np.testing.assert_allclose(vectors(c0), vectors(truncated), atol=2e-6)
    assert s_trunc.truncated_rows == 1 and s_trunc.output_rows == 16 and s_chunk.truncated_rows == 0
    assert truncated.column("token_start").to_pylist()[10] == 0


def test_long_error_names_the_row(run, mixed):
    path, _ = mixed
    with pytest.raises(InputTooLongError, match=r"row 10 \(id 10\)"):
        run(path, max_tokens=40, long="error", cache=False)


def test_explicit_chunk_tokens_chunks_fitting_texts(run, mixed):
    path, _ = mixed
    summary, table = run(path, chunk_tokens=16, chunk_overlap=4, cache=False)
    spans = [(r["token_start"], r["token_end"]) for r in table.to_pylist()]
    assert all(e - s <= 16 for s, e in spans) and summary.chunked_rows >= 1


def bad_corpus(tmp_path):
    good = make_texts(6, seed=4)
    text = pa.array([good[0], None, "", "   \n", good[1], b"ok \xff\xfe bytes".decode("latin-1"), good[2]])
    path = tmp_path / "bad.parquet"
    raw = pa.array(
        [good[0].encode(), None, b"", b"   \n", good[1].encode(), b"caf\xc3 broken", good[2].encode()], pa.binary()
    )
    pq.write_table(pa.table({"text": raw, "alt": text}), path)
    return path


def test_bad_rows_skipped_and_listed(run, tmp_path):
    path = bad_corpus(tmp_path)
    out = tmp_path / "o"
    summary, table = run(path, out=out, cache=False)
    assert table.column("id").to_pylist() == [0, 4, 6]
    assert summary.skipped_rows == 4
    assert summary.skipped_reasons == {"empty": 2, "invalid_utf8": 1, "null_text": 1}
    listed = [json.loads(line) for line in (out / "_skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"]) for s in listed] == [
        (1, "null_text"),
        (2, "empty"),
        (3, "empty"),
        (5, "invalid_utf8"),
    ]


def test_bad_rows_fail(run, tmp_path):
    with pytest.raises(EmbedpipeError, match=r"row 1 \(id 1\).*null"):
        run(bad_corpus(tmp_path), on_bad="fail", cache=False)


def test_non_string_column_rows(run, tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, None]}), path)
    summary, table = run(path, cache=False)
    assert table.num_rows == 0 and summary.skipped_reasons == {"non_string": 2, "null_text": 1}
    assert len(list((tmp_path / "out0").glob("part-*.parquet"))) == 1  # an empty part keeps the schema


def test_jsonl_mixed_types_and_surrogates(run, tmp_path, tiny_emb):
    lines = [
        '{"text": "the quick fox", "n": 1}',
        '{"text": 5, "n": 2}',
        '{"text": "bad \\ud800 half", "n": 3}',
        "not json at all",
        '{"text": null, "n": 5}',
        '{"text": "lazy dog", "n": 6}',
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary, table = run(path, keep=["n"], cache=False)
    assert table.column("id").to_pylist() == [0, 5] and table.column("n").to_pylist() == [1, 6]
    assert summary.skipped_reasons == {"invalid_json": 1, "invalid_utf8": 1, "non_string": 1, "null_text": 1}
    np.testing.assert_allclose(
        vectors(table), tiny_emb.encode(["the quick fox", "lazy dog"], task="document"), atol=2e-6
    )
