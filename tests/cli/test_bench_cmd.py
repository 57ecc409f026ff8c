"""`embedpipe bench kernels` (runs the kernel benchmark and reports same-run figures), `bench index`
plumbing, and the bench commands' flags checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.cli.errors import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_bench_kernels_json():
    res = CliRunner().invoke(
        app,
        ["bench", "kernels", "--type", "Q8_0,F16", "--tokens", "4", "--repeats", "1", "--threads", "1", "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    rows = doc["results"]
    assert {r["qtype"] for r in rows} == {"Q8_0", "F16"}
    assert {(r["k"], r["n"]) for r in rows} == {(768, 1152), (1152, 768)}
    assert all(r["gops"] > 0 and r["numpy_ms"] > 0 and r["tokens"] == 4 for r in rows)
    # the one-scale-per-row ceiling is measured for the integer type only
    assert all(r["row_scale_fraction_of_peak"] > 0 for r in rows if r["qtype"] == "Q8_0")
    assert all(r["row_scale_fraction_of_peak"] is None for r in rows if r["qtype"] == "F16")
    (peak,) = doc["peaks"].values()
    assert peak["measured_int8_gops"] > 0 and peak["threads"] == 1
    assert doc["elementwise"]


def test_bench_kernels_table_and_bad_type():
    res = CliRunner().invoke(app, ["bench", "kernels", "--tokens", "2", "--repeats", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "measured peaks" in res.output and "x numpy" in res.output and "1-scale %pk" in res.output
    bad = CliRunner().invoke(app, ["bench", "kernels", "--type", "Q9_9"])
    assert bad.exit_code != 0 and "unknown type" in bad.output


def test_unrunnable_isa_is_a_clean_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from embedpipe.cli.app import main; main()",
            "bench",
            "kernels",
            "--isa",
            "neon_dotprod",
            "--tokens",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "error: instruction set 'neon_dotprod' cannot run on this CPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_index_scaling_only_writes_its_figures_to_out(tmp_path):
    out = tmp_path / "scaling.json"
    args = ["bench", "index", "--dim", "16", "--m", "4", "--ef-construction", "16", "--threads", "1"]
    args += ["--scaling", "150,300", "--scaling-only", "--scaling-ours-only", "--out", str(out)]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["scaling"]["embedpipe-hnsw-fp32"]["sizes"] == [150, 300]
    assert "fitted exponent" in res.output


def test_bench_tiles_json_and_errors():
    res = CliRunner().invoke(
        app,
        ["bench", "tiles", "--tiles", "2x2", "--tokens", "3", "--rounds", "1", "--json"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["rounds"] == 1 and doc["threads"] == 1 and doc["qtype"] == "Q8_0"
    assert {r["tile"] for r in doc["results"]} == {doc["baseline"], "2x2/64"}
    assert {(r["k"], r["n"]) for r in doc["results"]} == {(768, 1152), (1152, 768)}
    for args, message in ((["--tiles", "4x"], "is not MRxNV"), (["--type", "F16"], "float kernels")):
        bad = CliRunner().invoke(app, ["bench", "tiles", *args])
        assert bad.exit_code != 0 and message in (bad.output + str(bad.exception))


USAGE_ERRORS = [
    # a mistyped reference was a KeyError traceback after the vectors were generated
    (["index", "--n", "100", "--dim", "16", "--ref", "bogus"], "unknown reference(s) bogus; choose from hnswlib,"),
    (["index", "--n", "100", "--dim", "16", "--ref", "hnswlib,none"], "unknown reference(s) none; choose from"),
    # --n-queries 0 left no vectors to index: "an annoy index needs at least 2 vectors, got 0"
    (["index", "--n", "100", "--dim", "16", "--n-queries", "0", "--ref", "annoy"], "'--n-queries'"),
    # --dim 0 built indexes, then reported a corrupt header
    (["index", "--n", "100", "--dim", "0"], "--dim"),
    (["index", "--n", "100", "--dim", "70000"], "--dim must be in 1..65536, got 70000"),
    # each of these exited 0 with meaningless figures
    (["index", "--n", "100", "--dim", "16", "--m", "0"], "'--m'"),
    (["index", "--n", "100", "--dim", "16", "--m", "5000"], "--m must be in 2..4096"),
    (["index", "--n", "100", "--dim", "16", "--ef-construction", "0"], "'--ef-construction'"),
    (["index", "--n", "100", "--dim", "16", "--budget-min", "-1"], "'--budget-min': Input should be greater than 0"),
    (["index", "--n", "100", "--dim", "16", "--budget-min", "0"], "'--budget-min'"),
    (["index", "--n", "100", "--dim", "16", "--single", "-5"], "'--single'"),
    (["index", "--n", "100", "--dim", "16", "--ours", "fp16"], "--ours takes fp32 and/or int8, not fp16"),
    (["index", "--dim", "16", "--scaling", "abc", "--scaling-only"], "--scaling takes integers"),
    (["index", "--dim", "16", "--scaling", "1,100", "--scaling-only"], "--scaling sizes must be >= 2, got 1"),
    (["serve", "--max-seconds", "-1"], "'--max-seconds': Input should be greater than 0"),
    (["serve", "--max-seconds", "0"], "'--max-seconds'"),
    (["serve", "--threads", "0"], "'--threads'"),
    (["serve", "--concurrency", "1,0"], "--concurrency must be >= 1"),
    (["serve", "--kind", "huge"], "unknown kind(s) huge; choose from short, long, xlong"),
    # exited 0 with "skipped bogus", while bench runtime refused an unknown peer
    (["serve", "--peer", "embedpipe,bogus"], "unknown peer(s) bogus; choose from embedpipe, llama.cpp"),
    (["runtime", "--peer", "bogus"], "unknown peer(s) bogus; choose from jit,"),
    # "11480.81 % of encode" over no texts
    (["ingest", "--n", "0"], "'--n'"),
    (["ingest", "--rss-rows", "-1"], "'--rss-rows'"),
    (["ingest", "--threads", "0"], "'--threads'"),
]


@pytest.mark.parametrize("args, needle", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_bench_flags_are_usage_errors_before_any_work(args, needle, capsys, monkeypatch):
    """Refused while parsing (exit 2, one line), before a model is resolved or a vector made."""

    def no_work(*_args, **_kw):
        raise AssertionError("work started")

    monkeypatch.setattr("embedpipe.runtime.registry.resolve_model", no_work)
    monkeypatch.setattr("embedpipe.indexes.bench_data.synthetic_vectors", no_work)
    assert run_cli(app, ["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(
    "name, needle",
    [
        ("nonexist_d/x.json", "nonexist_d: no such directory for the output x.json"),
        ("x.txt", "unknown output extension; use one of .json"),
        ("adir.json", "is a directory"),
    ],
)
def test_bench_index_checks_its_output_before_building(tmp_path, name, needle, capsys, monkeypatch):
    """A bad --out failed only when the first build's summary was written."""

    def no_work(*_args, **_kw):
        raise AssertionError("work started")

    monkeypatch.setattr("embedpipe.indexes.bench_data.synthetic_vectors", no_work)
    (tmp_path / "adir.json").mkdir()
    for flag in ("-o", "--output", "--out"):
        args = ["bench", "index", "--n", "100", "--dim", "16", flag, str(tmp_path / name)]
        assert run_cli(app, args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_bench_index_output_is_the_canonical_flag_with_out_kept():
    from embedpipe.cli.app import load_command

    (param,) = [p for p in load_command("bench").commands["index"].params if p.name == "output"]
    assert {"-o", "--output", "--out"} <= set(param.opts)


INGEST_ARGS = ["bench", "ingest", "--backend", "numpy", "--threads", "1", "--n", "4", "--repeats", "1"]


def test_bench_ingest_takes_the_any_dim_it_suggests(tiny_gguf, capsys):
    """A width the model does not offer suggested --any-dim, which bench ingest did not have."""
    from embedpipe.cli.app import load_command

    assert run_cli(app, [*INGEST_ARGS, "-m", str(tiny_gguf), "--dim", "32"]) == 1
    err = capsys.readouterr().err
    assert "--dim 32 is not offered by this model" in err and "pass --any-dim" in err
    (param,) = [p for p in load_command("bench").commands["ingest"].params if p.name == "any_dim"]
    assert param.opts == ["--any-dim"] and param.is_flag


def test_bench_ingest_runs_at_its_full_width(tiny_gguf, capsys):
    assert run_cli(app, [*INGEST_ARGS, "-m", str(tiny_gguf), "--dim", "64", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["texts"] == 4 and summary["repeats"] == 1


def test_bench_ingest_any_dim_embeds_at_that_width(tiny_gguf, capsys):
    assert run_cli(app, [*INGEST_ARGS, "-m", str(tiny_gguf), "--dim", "32", "--any-dim", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["texts"] == 4
