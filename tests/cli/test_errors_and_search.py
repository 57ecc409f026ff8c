"""Issue 16: one error style (one `error:` line, exit 1; usage errors exit 2; no traceback),
stdin `-`, embed output formats, per-document search results, index file modes."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedpipe.cli.app import app
from embedpipe.cli.errors import run_cli
from embedpipe.pipeline import IngestConfig, ingest
from embedpipe.runtime.embedder import Embedder

WORDS = "bread flour water salt yeast vector index parquet stream fox dog lazy quick".split()


@pytest.fixture(scope="module")
def corpus(tiny_gguf, tmp_path_factory):
    """Ingest output with short documents and a few long ones that are chunked; text kept."""
    tmp = tmp_path_factory.mktemp("errs")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 60 if i % 8 == 0 else 5)) for i in range(40)]
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp / "emb"
    cfg = IngestConfig(
        inputs=[str(src)],
        output=str(out),
        model=str(tiny_gguf),
        id_col="id",
        keep=["text"],
        chunk_tokens=16,
        chunk_overlap=4,
        backend="numpy",
        cache=False,
        progress=False,
    )
    ingest(cfg, embedder=Embedder.load(tiny_gguf, backend="numpy"))
    indexes = {}
    for kind in ("brute", "hnsw", "annoy"):
        indexes[kind] = tmp / f"{kind}.idx"
        assert run_cli(app, ["build-index", str(out), "--type", kind, "-o", str(indexes[kind])]) == 0
    (tmp / "empty.jsonl").write_text("")
    return tmp, out, indexes, texts


def _cli(args, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = run_cli(app, [str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _one_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["brute", "hnsw", "annoy"])
def test_empty_query_file_is_an_error_for_every_index_type(corpus, capsys, kind):
    tmp, _, indexes, _ = corpus
    code, out, err = _cli(["search", indexes[kind], "-i", tmp / "empty.jsonl", "--backend", "numpy"], capsys)
    assert code == 1 and out == ""
    _one_error(err, "empty.jsonl", "no queries")


@pytest.mark.parametrize("kind", ["brute", "hnsw", "annoy"])
def test_build_index_of_an_empty_ingest_output_is_refused(tiny_gguf, capsys, tmp_path, kind):
    """An empty corpus ingests to 0 rows; indexing it is one error and writes no file (an empty
    Annoy file could not even be loaded again)."""
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    out_dir = str(tmp_path / "emb")
    ingest(
        IngestConfig(
            inputs=[str(src)], output=out_dir, model=str(tiny_gguf), backend="numpy", cache=False, progress=False
        )
    )
    out = tmp_path / f"{kind}.idx"
    code, _, err = _cli(["build-index", tmp_path / "emb", "--type", kind, "-o", out], capsys)
    assert code == 1 and not out.exists()
    _one_error(err, "no vectors to index")


def test_build_index_into_an_existing_directory(corpus, capsys, tmp_path):
    _, emb, _, _ = corpus
    code, _, err = _cli(["build-index", emb, "-o", tmp_path], capsys)
    assert code == 1
    _one_error(err, "is a directory", "index.idx")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["build-index", "{emb}", "-o", "{tmp}/x.idx", "--m", "8"], "--m applies to hnsw indexes, not brute"),
        (["build-index", "{emb}", "-o", "{tmp}/x.idx", "--type", "hnsw", "--trees", "3"], "--trees applies to annoy"),
        (["search", "{brute}", "q", "--ef-search", "5"], "--ef-search does not apply to brute indexes"),
        (
            ["search", "{hnsw}", "q", "--search-k", "5"],
            "--search-k does not apply to hnsw indexes (they take: --ef-search)",
        ),
        (["search", "{brute}", "q", "--bogus"], "No such option: --bogus"),
        (["search", "{brute}", "q", "-k", "0"], "-k"),
        (["embed", "-o", "{tmp}/v.txt", "x"], ".npy, .jsonl, .parquet"),
        (["embed", "x", "-i", "{tmp}/q.jsonl"], "not both"),
        (["build-index", "{emb}"], "-o/--output"),
    ],
)
def test_usage_errors_exit_2(corpus, capsys, tmp_path, args, needle):
    _, emb, indexes, _ = corpus
    argv = [a.format(emb=emb, tmp=tmp_path, **{k: v for k, v in indexes.items()}) for a in args]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    _one_error(err, needle, "--help")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["search", "{tmp}/nofile.idx", "q"], "nofile.idx"),
        (["embed", "-i", "{tmp}/nofile.jsonl"], "nofile.jsonl"),
        (["ingest", "{tmp}/nofile.jsonl", "-o", "{tmp}/out"], "nofile.jsonl"),
        (["build-index", "{tmp}/nodir", "-o", "{tmp}/x.idx"], "nodir"),
        (["index", "info", "{tmp}/nofile.idx"], "nofile.idx"),
        (["model", "info", "no-such-model"], "no-such-model"),
        (["embed", "-m", "{model}", "-d", "100", "x"], "--dim 100 is not offered by this model: choose one of 64"),
        (["embed", "-m", "{model}", "-d", "32", "x"], "pass --any-dim for any width in 1..64"),
        (["ingest", "{emb}/../docs.jsonl", "-o", "{tmp}/o2", "-m", "{model}", "-d", "32"], "--dim 32"),
        (["build-index", "{emb}", "-o", "{tmp}/d.idx", "-d", "32"], "--dim 32 is not offered by this model"),
        (["build-index", "{emb}", "--type", "annoy", "-o", "{tmp}/d.idx", "-d", "32"], "pass --any-dim"),
        (["build-index", "{emb}", "-o", "{tmp}/d.idx", "-d", "65", "--any-dim"], "--dim 65"),
    ],
)
def test_input_errors_exit_1(corpus, tiny_gguf, capsys, tmp_path, args, needle):
    _, emb, _, _ = corpus
    argv = [a.format(emb=emb, tmp=tmp_path, model=tiny_gguf) for a in args] + (
        ["--backend", "numpy"] if args[0] in ("embed", "ingest") else []
    )
    code, _, err = _cli(argv, capsys)
    assert code == 1
    _one_error(err, needle)
    assert "(64,)" not in err  # no Python tuples in messages


def test_any_dim_allows_a_prefix_width(tiny_gguf, capsys):
    code, out, _ = _cli(["embed", "-m", tiny_gguf, "-d", "32", "--any-dim", "--backend", "numpy", "x"], capsys)
    assert code == 0 and len(json.loads(out)["embedding"]) == 32


def test_dim_errors_name_arguments_in_python(tiny_gguf):
    from embedpipe.runtime.dims import DimError

    emb = Embedder.load(tiny_gguf, backend="numpy")
    with pytest.raises(DimError, match=r"^dim 32 is not offered by this model: choose one of 64, or pass any_dim=True"):
        emb.encode(["x"], dim=32)


def test_build_index_dim_is_checked_like_every_dim(corpus, tmp_path):
    """build-index takes the recorded model's Matryoshka widths, any prefix with any_dim, and
    names the Python argument in the API; a foreign .npy (no model) offers its full width."""
    from embedpipe.indexes.query import build_from_dir
    from embedpipe.runtime.dims import DimError

    _, emb, _, _ = corpus
    with pytest.raises(DimError, match=r"^dim 32 is not offered by this model: choose one of 64, or pass any_dim=True"):
        build_from_dir(emb, tmp_path / "a.idx", dim=32)
    assert build_from_dir(emb, tmp_path / "a.idx", dim=32, any_dim=True).dim == 32
    assert build_from_dir(emb, tmp_path / "b.idx", kind="annoy", dim=64, n_trees=2).dim == 64
    np.save(tmp_path / "v.npy", np.eye(8, dtype=np.float32))
    with pytest.raises(DimError, match="choose one of 8"):
        build_from_dir(tmp_path / "v.npy", tmp_path / "c.idx", dim=4)
    assert build_from_dir(tmp_path / "v.npy", tmp_path / "c.idx", dim=4, any_dim=True).dim == 4


def test_matryoshka_dims_from_metadata_match_the_loaded_model(tiny_gguf):
    from embedpipe.runtime.dims import matryoshka_dims
    from embedpipe.runtime.gguf_file import GGUFModelFile

    assert matryoshka_dims(GGUFModelFile(tiny_gguf)) == Embedder.load(tiny_gguf, backend="numpy").dims


def test_stdin_dash_for_texts_and_input(tiny_gguf, capsys, monkeypatch):
    base = ["embed", "-m", tiny_gguf, "--backend", "numpy"]
    code, out, _ = _cli([*base, "-"], capsys, b"first text\nsecond text\n", monkeypatch)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    code, out2, _ = _cli([*base, "-i", "-"], capsys, b'{"text": "first text"}\n{"text": "second text"}\n', monkeypatch)
    assert code == 0 and out2 == out
    want = Embedder.load(tiny_gguf, backend="numpy").encode(["first text", "second text"])
    np.testing.assert_allclose([json.loads(line)["embedding"] for line in lines], want, atol=1e-6)
    code, _, err = _cli([*base, "-"], capsys, b"\n", monkeypatch)
    assert code == 1
    _one_error(err, "stdin", "no texts")


@pytest.mark.parametrize(
    "args, stdin, where",
    [
        (["-"], b"first text\n\nsecond text\n", "stdin line 2"),
        (["-"], b"first text\r\n  \r\n", "stdin line 2"),
        (["a", " "], b"", "TEXT argument 2"),
        (["-i", "-"], b'{"text": "a"}\n\n{"text": ""}\n', "<stdin>:3"),
    ],
)
def test_embed_refuses_a_blank_text_instead_of_dropping_its_row(tiny_gguf, capsys, monkeypatch, args, stdin, where):
    """A dropped blank line shifted every later row of a .npy against the input lines."""
    code, out, err = _cli(["embed", "-m", tiny_gguf, "--backend", "numpy", *args], capsys, stdin, monkeypatch)
    assert code == 1 and out == ""
    _one_error(err, where, "empty")


def test_tokenize_keeps_blank_lines_in_place(tiny_gguf, capsys, monkeypatch):
    code, out, _ = _cli(["tokenize", "-m", tiny_gguf, "-"], capsys, b"a\n\nb\n", monkeypatch)
    rows = [json.loads(line)["ids"] for line in out.splitlines()]
    assert code == 0 and len(rows) == 3 and len(rows[1]) < len(rows[0])


def test_search_refuses_a_blank_query(corpus, tmp_path, capsys, monkeypatch):
    index = corpus[2]["brute"]
    for args, stdin, where in [(["-"], b"a\n\n", "stdin line 2"), (["a", ""], b"", "QUERY argument 2")]:
        code, _, err = _cli(["search", index, *args], capsys, stdin, monkeypatch)
        assert code == 1
        _one_error(err, where, "empty")
    (tmp_path / "q.jsonl").write_text('{"query": "a"}\n"  "\n')
    code, _, err = _cli(["search", index, "-i", tmp_path / "q.jsonl"], capsys)
    assert code == 1
    _one_error(err, "q.jsonl:2", "empty")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, where no file can be created")
def test_an_output_that_cannot_be_written_is_named_as_given(tiny_gguf, capsys):
    """It was named by the temporary file written beside it (/proc/.v.npy.tmp.npy)."""
    code, _, err = _cli(["embed", "-m", tiny_gguf, "--backend", "numpy", "x", "-o", "/proc/v.npy"], capsys)
    assert code == 1
    _one_error(err, "/proc/v.npy: cannot write")
    assert ".tmp" not in err


@pytest.mark.parametrize("command", ["embed", "tokenize"])
@pytest.mark.parametrize("flags", [["-"], ["-i", "-"]])
def test_stdin_that_is_not_utf8_is_one_error_line(tiny_gguf, capsys, monkeypatch, command, flags):
    """A lone `-` read stdin without catching the decode error: a traceback."""
    args = [command, "-m", tiny_gguf, *flags]
    stdin = b'{"text": "ok"}\n' if flags != ["-"] else b"ok\n"
    code, out, err = _cli(args, capsys, stdin + b"\xff\xfe then text\n", monkeypatch)
    assert code == 1 and out == ""
    _one_error(err, "<stdin>", "not UTF-8 text", "at byte")


def test_search_reads_queries_from_stdin(corpus, capsys, monkeypatch):
    _, _, indexes, texts = corpus
    code, out, _ = _cli(
        ["search", indexes["brute"], "-", "--json", "-k", "2", "--backend", "numpy"],
        capsys,
        f"{texts[1]}\n{texts[2]}\n".encode(),
        monkeypatch,
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["query"] for r in rows] == [texts[1], texts[2]]


@pytest.mark.parametrize("ext", [".npy", ".jsonl", ".parquet"])
def test_embed_output_formats_round_trip(tiny_gguf, capsys, tmp_path, ext):
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    out = tmp_path / f"v{ext}"
    code, _, _ = _cli(["embed", "-m", tiny_gguf, "--backend", "numpy", "-o", out, *texts], capsys)
    assert code == 0
    want = Embedder.load(tiny_gguf, backend="numpy").encode(texts)
    if ext == ".npy":
        got = np.load(out)
    elif ext == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["index"], r["text"]) for r in rows] == list(enumerate(texts))
        got = np.array([r["embedding"] for r in rows], np.float32)
    else:
        table = pq.read_table(out)
        assert table.column("index").to_pylist() == [0, 1, 2] and table.column("text").to_pylist() == texts
        got = np.array(table.column("embedding").to_pylist(), np.float32)
    np.testing.assert_array_equal(got, want)  # float32 values survive every format exactly


def test_chunked_documents_collapse_to_their_best_chunk(corpus, tiny_gguf):
    import embedpipe

    _, _, indexes, texts = corpus
    index = embedpipe.Index(indexes["brute"], backend="numpy")
    assert index.chunked
    query = " ".join(texts[0].split()[:20])  # from a long document, which has several chunks
    every = index.search(query, k=index.count, per_chunk=True)
    docs = index.search(query, k=index.count)
    assert len(every) == index.count and len({h["id"] for h in every}) == len(docs) == 40
    best: dict = {}
    for hit in every:
        best.setdefault(hit["id"], hit)  # descending: the first is the best chunk
    assert [(h["id"], h["score"], h["chunk"]) for h in docs] == [
        (h["id"], h["score"], h["chunk"]) for h in sorted(best.values(), key=lambda h: -h["score"])
    ]
    long_hit = next(h for h in docs if h["id"] == "d0")
    assert "chunk_tokens" in long_hit and long_hit["text"] != texts[0]  # the chunk's own text span
    assert long_hit["text"].split()[0] in texts[0]
    top3 = embedpipe.search(indexes["brute"], query, k=3)
    assert [h["id"] for h in top3] == [h["id"] for h in docs[:3]]


def test_cli_search_per_chunk_flag(corpus, capsys):
    _, _, indexes, texts = corpus
    args = [
        "search",
        indexes["hnsw"],
        " ".join(texts[0].split()[:20]),
        "-k",
        "40",
        "--json",
        "--backend",
        "numpy",
        "--threads",
        "1",
    ]
    _, out, _ = _cli(args, capsys)
    ids = [h["id"] for h in json.loads(out)["results"]]
    assert len(ids) == len(set(ids))
    _, out, _ = _cli([*args, "--per-chunk"], capsys)
    ids = [h["id"] for h in json.loads(out)["results"]]
    assert len(ids) > len(set(ids))
    _, out, _ = _cli(args[:3] + ["-k", "3", "--backend", "numpy"], capsys)
    assert "text=" in out  # kept text shown by default


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_index_files_follow_the_umask(corpus, tmp_path, umask, mode):
    _, emb, _, _ = corpus
    old = os.umask(umask)
    try:
        assert run_cli(app, ["build-index", str(emb), "--type", "annoy", "-o", str(tmp_path / "a.idx")]) == 0
    finally:
        os.umask(old)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == mode, path


def test_ctrl_c_during_ingest_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import embedpipe.pipeline

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedpipe.pipeline, "ingest", interrupted)
    code, _, err = _cli(["ingest", tmp_path / "x.jsonl", "-o", tmp_path / "out"], capsys)
    assert code == 130
    _one_error(err, "interrupted", "run the same command again")


def test_empty_csv_title_is_no_title(tiny_gguf, tmp_path):
    """A blank CSV title cell and a JSON null title make the same cache entries."""
    csv = tmp_path / "d.csv"
    csv.write_text("text,title\nfirst doc,\nsecond doc,T\n")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        json.dumps({"text": "first doc", "title": None})
        + "\n"
        + json.dumps({"text": "second doc", "title": "T"})
        + "\n"
    )
    emb = Embedder.load(tiny_gguf, backend="numpy")
    common = dict(
        model=str(tiny_gguf), title_col="title", backend="numpy", cache_dir=str(tmp_path / "c"), progress=False
    )
    ingest(IngestConfig(inputs=[str(csv)], output=str(tmp_path / "o1"), **common), embedder=emb)
    summary = ingest(IngestConfig(inputs=[str(jsonl)], output=str(tmp_path / "o2"), **common), embedder=emb)
    assert summary.cache_hits == 2
    a = pq.read_table(next((tmp_path / "o1").glob("part-*.parquet"))).column("embedding").to_pylist()
    b = pq.read_table(next((tmp_path / "o2").glob("part-*.parquet"))).column("embedding").to_pylist()
    assert a == b


def test_registered_model_name_not_the_checkout_directory(monkeypatch, tmp_path):
    from embedpipe.runtime import registry, store

    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    entry = registry.lookup("all-minilm-l6-v2")
    assert registry.registered_name(store.model_dir(entry.spec) / "x-q8_0.gguf") == "all-minilm-l6-v2"
    assert registry.registered_name(tmp_path / "elsewhere.gguf") is None


def test_model_pull_help_describes_the_models(capsys):
    with pytest.raises(SystemExit):
        app(["model", "pull", "--help"])
    out = capsys.readouterr().out
    assert "EmbeddingGemma-300M" in out and "mirror" not in out.lower()


def test_eval_json_prints_to_stdout_and_writes_files_by_extension(tmp_path):
    from embedpipe.cli import eval_cmd

    rows = [{"dim": 64, "quant": "fp32", "index": "brute", "recall@10": 1.0}]
    path = tmp_path / "rows.json"
    buf = io.StringIO()
    old = sys.stdout
    sys.stdout = buf
    try:
        eval_cmd._emit(rows, [path, tmp_path / "rows.md"], True, {})
    finally:
        sys.stdout = old
    assert json.loads(buf.getvalue()) == rows == json.loads(path.read_text())
    assert "recall@10" in (tmp_path / "rows.md").read_text()


def test_readme_has_no_dangling_design_reference():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for line in readme.splitlines():
        if "DESIGN.md" in line:
            assert "../shared/DESIGN.md" in line or "/work/shared/DESIGN.md" in line, line


def test_chunk_text_of_a_text_column_with_another_name(tiny_gguf, tmp_path):
    import embedpipe

    rng = np.random.default_rng(2)
    body = " ".join(rng.choice(WORDS, 60))
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"body": body}) + "\n" + json.dumps({"body": "fox dog"}) + "\n")
    cfg = IngestConfig(
        inputs=[str(src)],
        output=str(tmp_path / "emb"),
        model=str(tiny_gguf),
        text_col="body",
        keep=["body"],
        chunk_tokens=16,
        chunk_overlap=4,
        backend="numpy",
        cache=False,
        progress=False,
    )
    ingest(cfg, embedder=Embedder.load(tiny_gguf, backend="numpy"))
    assert run_cli(app, ["build-index", str(tmp_path / "emb"), "-o", str(tmp_path / "b.idx")]) == 0
    index = embedpipe.Index(tmp_path / "b.idx", backend="numpy")
    assert index.text_column == "body"
    hit = next(h for h in index.search(" ".join(body.split()[:10]), k=2) if h["id"] == 0)
    assert "chunk_tokens" in hit and len(hit["body"]) < len(body)


def test_ingest_stdin_again_reuses_the_saved_copy_and_other_bytes_never_replace_it(
    tiny_gguf, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "emb"
    spool = tmp_path / "emb.stdin.jsonl"
    args = ["ingest", "-m", tiny_gguf, "--backend", "numpy", "-", "-o", out, "--no-progress"]
    first = b'{"text": "one"}\n{"text": "two"}\n'
    code, _, err = _cli(args, capsys, first, monkeypatch)
    assert code == 0 and spool.read_bytes() == first, err
    stamp = spool.stat().st_mtime_ns
    code, _, err = _cli(args, capsys, first, monkeypatch)  # the same job again: nothing to do
    assert code == 0 and "using that file" in err and spool.stat().st_mtime_ns == stamp
    code, _, err = _cli(args, capsys, b'{"text": "oops"}\n', monkeypatch)
    assert code == 1 and spool.read_bytes() == first
    _one_error(err, "stdin differs from", "--overwrite")
    code, _, err = _cli([*args, "--overwrite"], capsys, b'{"text": "oops"}\n', monkeypatch)
    assert code == 0 and spool.read_bytes() == b'{"text": "oops"}\n', err
    assert not list(tmp_path.glob(".*.tmp"))


def test_embed_checks_its_output_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """A missing directory used to fail only after every text was embedded; an output that is
    the input file overwrote it."""
    from embedpipe.runtime import embedder

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(embedder.Embedder, "load", no_load)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n')
    code, _, err = _cli(["embed", "a", "-o", tmp_path / "nope" / "x.npy"], capsys)
    assert code == 1
    _one_error(err, "no such directory for the output")
    code, _, err = _cli(["embed", "-i", src, "-o", src], capsys)
    assert code == 1 and src.read_text() == '{"text": "a"}\n'
    _one_error(err, "is the input file")
