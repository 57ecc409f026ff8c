"""`build-index --update`, tombstones (`index delete` / `compact`), `index info`, foreign inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.errors import EmbedpipeError
from embedpipe.indexes import load_index
from embedpipe.indexes.query import build_from_dir
from embedpipe.indexes.update import UpdateError, update_from_dir
from embedpipe.pipeline.dataset import EmbeddingsDirError

from .helpers import clustered, exact_topk, recall

runner = CliRunner()
D = 32
GRAPH = {"brute": {}, "hnsw": {"m": 8, "ef_construction": 48}}  # build parameters per type


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write_part(emb_dir: Path, number: int, x: np.ndarray, first_id: int) -> None:
    """One part in the `ingest` layout (ids, fixed-size float32 embedding, model metadata)."""
    emb_dir.mkdir(parents=True, exist_ok=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    table = pa.table(
        {
            "id": np.arange(first_id, first_id + len(x), dtype=np.int64),
            "embedding": emb,
            "title": [f"t{first_id + i}" for i in range(len(x))],
        }
    )
    table = table.replace_schema_metadata(
        {"embedpipe.model_sha256": "ab" * 32, "embedpipe.dim": str(x.shape[1]), "embedpipe.task": "document"}
    )
    pq.write_table(table, emb_dir / f"part-{number:05d}.parquet")


@pytest.fixture()
def corpus(tmp_path):
    x = clustered(2200, D, seed=31)
    emb = tmp_path / "emb"
    write_part(emb, 0, x[:1000], 0)
    write_part(emb, 1, x[1000:2000], 1000)
    return x, emb


@pytest.mark.parametrize("kind", ["brute", "hnsw"])
def test_update_adds_new_parts_only(corpus, tmp_path, kind):
    x, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, kind, **GRAPH[kind])
    assert update_from_dir(emb, idx)[1] == 0  # nothing new
    write_part(emb, 2, x[2000:], 2000)
    res = _run("build-index", emb, "--update", idx)
    assert res.exit_code == 0, res.output
    ix = load_index(idx)
    assert ix.count == 2200 and ix.ids.ints[-1] == 2199
    assert ix.columns["title"][2100] == "t2100"
    q = clustered(60, D, seed=32)
    fresh = build_from_dir(emb, tmp_path / "fresh", kind, **GRAPH[kind])
    truth = exact_topk(x, q, 10)
    got, want = recall(ix.search(q, 10)[1], truth), recall(fresh.search(q, 10)[1], truth)
    assert got >= want - 0.02
    _, top = ix.search(x[2000:2050], 1)
    assert (top[:, 0] == np.arange(2000, 2050)).mean() >= 0.95


def test_update_refuses_foreign_or_other_dir(corpus, tmp_path):
    x, emb = corpus
    npy = tmp_path / "v.npy"
    np.save(npy, x[:300])
    build_from_dir(npy, tmp_path / "f", "hnsw", m=8)
    with pytest.raises(UpdateError, match="does not record"):
        update_from_dir(emb, tmp_path / "f")
    build_from_dir(emb, tmp_path / "ix", "brute")
    other = tmp_path / "other"
    write_part(other, 7, x[:10], 0)
    with pytest.raises(UpdateError, match="missing"):
        update_from_dir(other, tmp_path / "ix")


def _job_header(emb_dir: Path, inputs: str) -> None:
    (emb_dir / "_manifest.jsonl").write_text(json.dumps({"kind": "header", "inputs": inputs}) + "\n")


def test_update_refuses_parts_of_another_ingest_job(corpus, tmp_path):
    x, emb = corpus
    _job_header(emb, "a.parquet")
    build_from_dir(emb, tmp_path / "ix", "brute")
    other = tmp_path / "other"  # same part names, other rows: another job's output
    write_part(other, 0, x[:1000], 0)
    write_part(other, 1, x[1000:2000], 1000)
    write_part(other, 2, x[2000:], 5000)
    _job_header(other, "b.parquet")
    with pytest.raises(UpdateError, match="another ingest job"):
        update_from_dir(other, tmp_path / "ix")
    write_part(emb, 2, x[2000:], 2000)  # the same job's next part is welcome
    assert update_from_dir(emb, tmp_path / "ix")[1] == 200


def test_update_refuses_rows_that_reuse_held_ids(corpus, tmp_path):
    x, emb = corpus
    build_from_dir(emb, tmp_path / "ix", "brute")
    write_part(emb, 2, x[2000:], 1900)  # ids 1900..2099: 100 already held
    res = runner.invoke(app, ["build-index", str(emb), "--update", str(tmp_path / "ix")])
    assert res.exit_code != 0 and "100 new row(s) reuse ids the index already holds (1900" in str(res.exception)
    assert load_index(tmp_path / "ix").count == 2000


def test_kill_during_update_leaves_old_index_usable_and_rerun_finishes(corpus, tmp_path):
    x, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, "hnsw", m=8, ef_construction=48)
    before = idx.read_bytes()
    big = clustered(30_000, D, seed=33)
    write_part(emb, 2, big, 5000)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedpipe.cli", "build-index", str(emb), "--update", str(idx)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # kill once the update is inserting (its progress bar is on stderr)
    deadline = time.monotonic() + 120
    buf = b""
    while b"hnsw insert" not in buf and time.monotonic() < deadline and proc.poll() is None:
        buf += proc.stderr.read1(256)
    assert proc.poll() is None, "the update ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert idx.read_bytes() == before  # old index intact and usable
    assert load_index(idx).search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    (tmp_path / ".ix.abc123.tmp").write_bytes(b"half-written")  # as a kill during save leaves
    update_from_dir(emb, idx)  # the rerun does the whole update
    assert not list(tmp_path.glob(".ix.*.tmp"))
    ix = load_index(idx)
    assert ix.count == 32_000
    assert sorted(ix.meta.extra["part_rows"]) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


@pytest.mark.parametrize("kind", ["brute", "hnsw"])
def test_delete_hides_ids_update_keeps_them_hidden_compact_drops_them(corpus, tmp_path, kind):
    x, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, kind, **GRAPH[kind])
    gone = list(range(0, 2000, 3))
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, gone[1:])))
    assert _run("index", "delete", idx, "--ids", "0").exit_code == 0
    assert _run("index", "delete", idx, "--ids-file", ids_file).exit_code == 0
    res = runner.invoke(app, ["index", "delete", str(idx), "--ids", "999999"])
    assert res.exit_code != 0 and "not in the index" in str(res.exception)
    q = x[gone[:80]]  # query with the deleted vectors themselves
    _, ids = load_index(idx).search(q, 10)
    assert not np.isin(ids, gone).any() and (ids >= 0).all()
    write_part(emb, 2, x[2000:], 2000)
    update_from_dir(emb, idx)
    ix = load_index(idx)
    assert len(ix.deleted) == len(gone) and not np.isin(ix.search(q, 10)[1], gone).any()
    info = json.loads(_run("index", "info", idx, "--json").output)
    assert info["tombstones"] == len(gone) and info["live"] == 2200 - len(gone)
    assert _run("index", "compact", idx).exit_code == 0
    ix = load_index(idx)
    assert ix.count == 2200 - len(gone) and len(ix.deleted) == 0
    assert not np.isin(ix.ids.ints, gone).any()
    live = np.setdiff1d(np.arange(2200), gone)
    qq = clustered(40, D, seed=34)
    assert recall(ix.search(qq, 10)[1], live[exact_topk(x[live], qq, 10)]) >= 0.9


def test_index_info_text_and_json(corpus, tmp_path):
    _, emb = corpus
    build_from_dir(emb, tmp_path / "h", "hnsw", quant="int8", m=8, seed=3)
    out = _run("index", "info", tmp_path / "h").output
    assert "type:" in out and "hnsw" in out and "tombstones:" in out
    info = json.loads(_run("index", "info", tmp_path / "h", "--json").output)
    assert info["count"] == 2000 and info["quant"] == "int8" and info["params"]["seed"] == 3
    assert info["parts"] == 2 and info["graph"]["max_level"] >= 1


@pytest.mark.parametrize("kind", ["brute", "annoy"])
def test_index_info_verify_reads_the_payload_and_names_a_damaged_file(corpus, tmp_path, capsys, kind):
    from embedpipe.cli.errors import run_cli

    _, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, kind, **GRAPH.get(kind, {}))
    assert json.loads(_run("index", "info", idx, "--json", "--verify").output)["checksums"] == "verified"
    data = bytearray(idx.read_bytes())  # annoy: the .ann file itself (its sidecar is ix.ids)
    data[-5] ^= 0xFF  # one payload byte: the header still reads
    idx.write_bytes(bytes(data))
    assert json.loads(_run("index", "info", idx, "--json").output)["checksums"].startswith("not checked")
    capsys.readouterr()
    assert run_cli(app, ["index", "info", str(idx), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "checksum" in err, err


def test_foreign_parquet_arrow_npy_and_vector_search(tmp_path):
    x = clustered(800, D, seed=41)
    raw = x * np.linspace(0.5, 2, len(x))[:, None].astype(np.float32)  # not unit length
    ids = [f"doc-{i}" for i in range(len(x))]
    pq.write_table(pa.table({"doc": ids, "vec": pa.array(list(raw), pa.list_(pa.float32()))}), tmp_path / "st.parquet")
    feather.write_feather(pa.table({"id": np.arange(800), "embedding": pa.array(list(x))}), tmp_path / "oa.arrow")
    np.save(tmp_path / "v.npy", x)
    res = runner.invoke(
        app,
        [
            "build-index",
            str(tmp_path / "st.parquet"),
            "--id-column",
            "doc",
            "--embedding-column",
            "vec",
            "-o",
            str(tmp_path / "a"),
        ],
    )
    assert res.exit_code != 0 and "--normalize" in str(res.exception)
    for src, extra in (
        ("st.parquet", ["--id-column", "doc", "--embedding-column", "vec", "--normalize"]),
        ("oa.arrow", []),
        ("v.npy", []),
    ):
        out = tmp_path / (src + ".idx")
        res = _run("build-index", tmp_path / src, "--type", "hnsw", "--m", "8", "-o", out, *extra)
        assert res.exit_code == 0, res.output
        ix = load_index(out)
        assert ix.count == 800 and ix.meta.extra["model"] == "none"
    np.save(tmp_path / "q.npy", x[:5])
    res = _run(
        "search", tmp_path / "st.parquet.idx", "--vectors", tmp_path / "q.npy", "--json", "-k", "3", "--ef-search", "40"
    )
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["results"][0]["id"] for r in rows] == ids[:5]
    vec = ",".join(f"{v:.7f}" for v in x[7])
    res = _run("search", tmp_path / "v.npy.idx", "--vector", vec, "--json", "-k", "1")
    assert json.loads(res.output)["results"][0]["id"] == 7
    res = runner.invoke(app, ["search", str(tmp_path / "v.npy.idx"), "some text"])
    assert res.exit_code != 0 and "no model" in str(res.exception or res.output)


def test_foreign_bad_inputs_are_one_line_errors(tmp_path):
    x = clustered(50, D, seed=42)
    x[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    for name, msg in (("nan.npy", "NaN"), ("flat.npy", "2-D"), ("junk.parquet", "unreadable")):
        proc = subprocess.run(
            [sys.executable, "-m", "embedpipe.cli", "build-index", str(tmp_path / name), "-o", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        )
        assert proc.returncode != 0
        assert proc.stderr.startswith("error:") and msg in proc.stderr and "Traceback" not in proc.stderr


def test_update_repairs_hnsw_around_tombstones(corpus, tmp_path):
    x, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, "hnsw", m=8, ef_construction=48)
    gone = np.arange(0, 2000, 4)
    from embedpipe.indexes.tombstones import delete_ids

    delete_ids(idx, gone.tolist())
    ix = load_index(idx)
    assert np.isin(np.asarray(ix.nbr0), gone).any()  # before: routing through tombstones
    write_part(emb, 2, x[2000:], 2000)
    update_from_dir(emb, idx)
    ix = load_index(idx)
    live = np.setdiff1d(np.arange(2200), gone)
    nbr0 = np.asarray(ix.nbr0)
    assert not np.isin(nbr0[live], gone).any()  # after: live lists skip them
    assert (nbr0[live, 0] >= 0).all()
    q = clustered(60, D, seed=35)
    assert recall(ix.search(q, 10)[1], live[exact_topk(x[live], q, 10)]) >= 0.9


@pytest.mark.parametrize("command", [["index", "compact"], ["index", "delete", "--ids", "3"]])
def test_annoy_indexes_refuse_tombstone_commands_in_one_line(corpus, tmp_path, command):
    _, emb = corpus
    build_from_dir(emb, tmp_path / "a.ann", "annoy", n_trees=2)
    res = runner.invoke(app, [*command[:2], str(tmp_path / "a.ann"), *command[2:]])
    assert res.exit_code != 0 and "annoy indexes cannot hold tombstones" in str(res.exception)


def test_compact_checks_its_output_first_and_skips_an_index_without_tombstones(corpus, tmp_path):
    from embedpipe.indexes.tombstones import compact

    _, emb = corpus
    idx = tmp_path / "ix"
    build_from_dir(emb, idx, "brute")
    before = idx.stat().st_mtime_ns
    index, dropped = compact(idx)
    assert dropped == 0 and index.count == 2000 and idx.stat().st_mtime_ns == before
    _run("index", "delete", idx, "--ids", "5")
    (tmp_path / "d").mkdir()
    for out, message in [(tmp_path / "d", "is a directory"), (tmp_path / "no" / "ix", "no such directory")]:
        with pytest.raises(EmbedpipeError, match=message):
            compact(idx, out)
    assert len(load_index(idx).deleted) == 1  # untouched
    assert compact(idx, tmp_path / "c")[1] == 1 and load_index(tmp_path / "c").count == 1999


def test_foreign_ids_must_exist_when_named_and_be_unique(tmp_path):
    x = clustered(20, D, seed=43)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), D)
    pq.write_table(pa.table({"id": [1] * 5 + list(range(2, 17)), "embedding": emb}), tmp_path / "dup.parquet")
    with pytest.raises(EmbeddingsDirError, match=r"'id' holds 4 repeated id\(s\) \(id 1 appears 5 times\)"):
        build_from_dir(tmp_path / "dup.parquet", tmp_path / "o")
    pq.write_table(pa.table({"doc": [f"d{i}" for i in range(20)], "embedding": emb}), tmp_path / "s.parquet")
    with pytest.raises(EmbeddingsDirError, match=r"no id column 'nope' \(columns: doc, embedding\)"):
        build_from_dir(tmp_path / "s.parquet", tmp_path / "o", id_column="nope")
    assert build_from_dir(tmp_path / "s.parquet", tmp_path / "o").ids.ints[-1] == 19  # no 'id': row numbers
    assert build_from_dir(tmp_path / "s.parquet", tmp_path / "o", id_column="doc").ids.strings[3] == "d3"


def test_an_output_over_the_input_is_refused_and_the_input_kept(corpus, tmp_path):
    x, emb = corpus
    np.save(tmp_path / "v.npy", x[:50])
    part = emb / "part-00000.parquet"
    before = part.read_bytes()
    for src, out in ((tmp_path / "v.npy", tmp_path / "v.npy"), (emb, part), (emb, emb / "_manifest.jsonl")):
        res = runner.invoke(app, ["build-index", str(src), "-o", str(out)])
        assert res.exit_code != 0 and "would overwrite the input" in str(res.exception)
    assert np.load(tmp_path / "v.npy").shape == (50, D) and part.read_bytes() == before
    assert _run("build-index", emb, "-o", emb / "docs.idx").exit_code == 0  # beside the parts is fine


@pytest.mark.parametrize(
    "given, named",
    [
        (["--type", "hnsw", "--quant", "int8", "--dim", "16"], "--type, --quant, --dim"),
        (["--type", "brute"], "--type"),  # even the index's own type: an update takes none of these
        (["--no-text", "--normalize"], "--no-text, --normalize"),
        (["--m", "4"], "--m"),
    ],
)
def test_update_refuses_options_that_only_a_build_takes(corpus, tmp_path, given, named):
    _, emb = corpus
    build_from_dir(emb, tmp_path / "ix", "brute")
    res = runner.invoke(app, ["build-index", str(emb), "--update", str(tmp_path / "ix"), *given])
    assert res.exit_code == 2 and f"{named}: --update keeps the index's own build parameters" in res.output
    assert _run("build-index", emb, "--update", tmp_path / "ix").exit_code == 0


def test_deleting_no_ids_is_an_error_not_a_rewrite(corpus, tmp_path):
    _, emb = corpus
    build_from_dir(emb, tmp_path / "ix", "brute")
    (tmp_path / "none.txt").write_text("\n \n")
    for flags, where in ((["--ids", " , "], "--ids"), (["--ids-file", str(tmp_path / "none.txt")], "none.txt")):
        res = runner.invoke(app, ["index", "delete", str(tmp_path / "ix"), *flags])
        assert res.exit_code != 0 and f"{where}: no ids given" in str(res.exception)
