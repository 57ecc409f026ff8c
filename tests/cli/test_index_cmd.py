"""`build-index` on real `ingest` output (tiny model) and `search` through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.indexes import load_index
from embedpipe.indexes.query import ModelMismatchError, open_embedder
from embedpipe.pipeline import IngestConfig, ingest
from embedpipe.runtime.embedder import Embedder

runner = CliRunner()
WORDS = "bread flour water salt yeast vector index parquet stream fox dog lazy quick".split()


@pytest.fixture(scope="module")
def emb_dir(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(2, 8)))) for _ in range(80)]
    src = tmp / "corpus.parquet"
    pq.write_table(
        pa.table({"text": texts, "doc": [f"d{i}" for i in range(80)], "title": [f"title {i}" for i in range(80)]}), src
    )
    out = tmp / "emb"
    embedder = Embedder.load(tiny_gguf, backend="numpy")
    ingest(
        IngestConfig(
            inputs=[str(src)], output=str(out), model=str(tiny_gguf), id_col="doc", keep=["title"], backend="numpy"
        ),
        embedder=embedder,
    )
    return out, texts


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("kind,quant", [("brute", "int8"), ("annoy", "fp32"), ("hnsw", "fp32")])
def test_build_index_then_search_json(emb_dir, tiny_gguf, tmp_path, kind, quant):
    emb, texts = emb_dir
    out = tmp_path / f"{kind}.idx"
    res = _run(
        "build-index",
        str(emb),
        "--type",
        kind,
        "--quant",
        quant,
        "--dim",
        "32",
        "--any-dim",
        "-o",
        str(out),
        *{"annoy": ["--trees", "5"], "hnsw": ["--m", "8"]}.get(kind, []),
    )
    assert res.exit_code == 0, res.output
    ix = load_index(out)
    assert ix.count == 80 and ix.dim == 32 and ix.meta.task == "document"
    assert sum(ix.meta.extra["part_rows"].values()) == 80 and ix.meta.extra["parts"] == 1
    embedder = Embedder.load(tiny_gguf, backend="numpy")
    assert ix.meta.model_sha256 == embedder.model_sha256
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": texts[3]}) + "\n" + json.dumps(texts[9]) + "\n")
    res = _run("search", str(out), "--input", str(queries), "-k", "4", "--json")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert [line["query"] for line in lines] == [texts[3], texts[9]]
    want = ix.search(embedder.encode([texts[3], texts[9]], task="query"), 4)
    for line, ids in zip(lines, want[1]):
        assert [r["id"] for r in line["results"]] == list(ids)
        assert all(r["title"].startswith("title ") for r in line["results"])
        assert all(set(r) >= {"id", "score"} for r in line["results"])
    res = _run("search", str(out), texts[5], "-k", "2")
    assert res.exit_code == 0 and res.output.startswith(f"query: {texts[5]}")


def test_model_mismatch_is_refused(emb_dir, tiny_model_q8, tmp_path):
    emb, _ = emb_dir
    out = tmp_path / "b.idx"
    assert _run("build-index", str(emb), "-o", str(out)).exit_code == 0
    ix = load_index(out)
    with pytest.raises(ModelMismatchError, match="SHA-256"):
        open_embedder(ix, tiny_model_q8.path, backend="numpy")
    assert open_embedder(ix, tiny_model_q8.path, allow_mismatch=True, backend="numpy")


def test_bad_inputs(tmp_path):
    with pytest.raises(Exception, match="no part-"):
        _run("build-index", str(tmp_path), "-o", str(tmp_path / "x"))
    res = _run("build-index", str(tmp_path), "-o", str(tmp_path / "x"), "--type", "kd")
    assert res.exit_code != 0 and "--type" in res.output


def test_int8_embeddings_dir_reads_as_float(emb_dir, tiny_gguf, tmp_path):
    from embedpipe.pipeline.dataset import read_embeddings

    emb, _ = emb_dir
    src = sorted(emb.parent.glob("corpus.parquet"))[0]
    out8 = tmp_path / "emb8"
    ingest(
        IngestConfig(
            inputs=[str(src)], output=str(out8), model=str(tiny_gguf), id_col="doc", dtype="int8", backend="numpy"
        ),
        embedder=Embedder.load(tiny_gguf, backend="numpy"),
    )
    f32, i8 = read_embeddings(emb), read_embeddings(out8)
    assert list(i8.ids) == list(f32.ids) and i8.meta.model_sha256 == f32.meta.model_sha256
    np.testing.assert_allclose(i8.vectors, f32.vectors, atol=0.01)


def test_build_index_options_come_from_declared_parameters(emb_dir, tmp_path):
    from embedpipe.indexes.registry import declared_parameters

    for command, what in (("build-index", "build"), ("search", "search")):
        res = _run(command, "--help")
        for p, _ in declared_parameters(what).values():
            assert p.option.split("/")[0] in res.output, (command, p.name)
    emb, _ = emb_dir
    out = tmp_path / "h.idx"
    res = _run(
        "build-index",
        str(emb),
        "--type",
        "hnsw",
        "-o",
        str(out),
        "--m",
        "6",
        "--ef-search",
        "40",
        "--scale",
        "vector",
        "--quant",
        "int8",
    )
    assert res.exit_code == 0, res.output
    ix = load_index(out)
    assert (ix.m, ix.ef_search, ix.scale_mode) == (6, 40, "vector")
    res = _run("build-index", str(emb), "-o", str(tmp_path / "b.idx"), "--scale", "bogus")
    assert res.exit_code != 0 and "scale_mode must be one of" in res.output


def test_search_knobs_are_options_passed_to_the_index(emb_dir, tiny_gguf, tmp_path):
    emb, texts = emb_dir
    out = tmp_path / "h.idx"
    assert _run("build-index", str(emb), "--type", "hnsw", "-o", str(out), "--m", "4").exit_code == 0
    ix = load_index(out)
    q = Embedder.load(tiny_gguf, backend="numpy").encode(texts[:3], task="query")
    for ef in ("1", "64"):
        res = _run("search", str(out), *texts[:3], "-k", "5", "--json", "--ef-search", ef)
        assert res.exit_code == 0, res.output
        got = [[r["id"] for r in json.loads(line)["results"]] for line in res.output.splitlines()]
        assert got == [list(row) for row in ix.search(q, 5, ef_search=int(ef))[1]]
    brute = tmp_path / "b.idx"
    assert _run("build-index", str(emb), "-o", str(brute)).exit_code == 0
    res = _run("search", str(brute), texts[0], "--search-k", "5")  # not brute's: refused
    assert res.exit_code == 2 and "--search-k does not apply to brute indexes" in res.output
