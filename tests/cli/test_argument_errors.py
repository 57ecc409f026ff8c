"""One mechanism for argument names in messages: the Python API names its arguments, the CLI
prints the same error with the flags (`errors.ArgumentError.cli_message`, used by `run_cli`)."""

from __future__ import annotations

import pytest

from embedpipe.cli.app import app
from embedpipe.cli.errors import run_cli
from embedpipe.errors import ArgumentError, cli_flag
from embedpipe.eval import gate
from embedpipe.indexes.query import vector_queries
from embedpipe.pipeline import IngestConfig
from embedpipe.serve.config import ServeConfig


@pytest.mark.parametrize(
    "call,python,cli",
    [
        (
            lambda: IngestConfig(inputs=["x"], output="o", chunk_tokens=0).validate(),
            "chunk_tokens must",
            "--chunk-tokens must",
        ),
        (
            lambda: IngestConfig(inputs=["x"], output="o", chunk_tokens=8, chunk_overlap=8).validate(),
            "chunk_overlap (8) must be smaller than chunk_tokens (8)",
            "--chunk-overlap (8) must be smaller than --chunk-tokens (8)",
        ),
        (
            lambda: IngestConfig(inputs=["x"], output="o", resume=True, overwrite=True).validate(),
            "resume and overwrite contradict",
            "--resume and --overwrite contradict",
        ),
        (lambda: ServeConfig(port=70000).validate(), "port must be in 0..65535", "--port must be in 0..65535"),
        (lambda: ServeConfig(max_batch_tokens=0).validate(), "max_batch_tokens must", "--max-batch-tokens must"),
        (lambda: gate.validate(2.0, "768"), "min_recall must be between", "--min-recall must be between"),
        (lambda: vector_queries("1,x"), "vector must be comma-separated", "--vector must be comma-separated"),
        (lambda: vector_queries(), "vector or vectors: give exactly one", "--vector or --vectors: give exactly one"),
    ],
)
def test_python_names_arguments_cli_names_flags(call, python, cli):
    with pytest.raises(ArgumentError) as err:
        call()
    assert str(err.value).startswith(python)
    assert err.value.cli_message().startswith(cli)
    assert "--" not in str(err.value)


def test_hints_show_values_in_each_spelling(tmp_path):
    from embedpipe.pipeline.manifest import Manifest

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stray.txt").write_text("x")
    err = ArgumentError("on_bad", "row 3 is empty; use {on_bad} to skip such rows", values={"on_bad": "skip"})
    assert str(err) == "row 3 is empty; use on_bad='skip' to skip such rows"
    assert err.cli_message() == "row 3 is empty; use --on-bad skip to skip such rows"
    with pytest.raises(ArgumentError) as got:
        Manifest.open(tmp_path / "out", {}, resume=True, overwrite=False)
    assert "run without resume=True to start" in str(got.value)
    assert "run without --resume to start" in got.value.cli_message()


def test_flag_spelling_table():
    assert cli_flag("chunk_tokens") == "--chunk-tokens"
    assert cli_flag("n_trees") == "--trees"


def test_cli_prints_the_flag_spelling(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    code = run_cli(app, ["ingest", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "o"), "--chunk-tokens", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: --chunk-tokens must be positive, got 0")
