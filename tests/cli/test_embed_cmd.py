"""The CLI contract of `embed`, `tokenize` and `model info` on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.runtime.embedder import Embedder

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_embed_jsonl_to_npy_in_input_order(tiny_gguf, tmp_path):
    rows = [{"text": "first"}, {"text": "second text", "title": "T"}, {"text": "", "title": "Only a title"}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.npy"
    res = _run(
        "embed",
        "--model",
        str(tiny_gguf),
        "--task",
        "document",
        "--dim",
        "32",
        "--any-dim",
        "--input",
        str(src),
        "--output",
        str(out),
        "--backend",
        "numpy",
    )
    assert res.exit_code == 0, res.output
    got = np.load(out)
    assert got.shape == (3, 32) and got.dtype == np.float32
    want = Embedder.load(tiny_gguf, backend="numpy").encode(
        [r["text"] for r in rows], task="document", titles=[r.get("title") for r in rows], dim=32, any_dim=True
    )
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_embed_arguments_print_json_lines(tiny_gguf):
    res = _run("embed", "--model", str(tiny_gguf), "-d", "16", "--any-dim", "--backend", "numpy", "one", "two")
    assert res.exit_code == 0
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 2 and all(len(line["embedding"]) == 16 for line in lines)


def test_tokenize_prints_ids(tiny_gguf):
    res = _run("tokenize", "--model", str(tiny_gguf), "hello", "")
    assert [json.loads(line)["ids"] for line in res.stdout.splitlines()][1] == [2, 1]


def test_tokenize_checks_the_context_like_the_api(tiny_gguf):
    from embedpipe.errors import InputTooLongError

    emb = Embedder.load(tiny_gguf, backend="numpy")
    long_text = " ".join(["river mountain forest"] * 100)
    with pytest.raises(InputTooLongError, match="context"):
        _run("tokenize", "--model", str(tiny_gguf), long_text)
    res = _run("tokenize", "--model", str(tiny_gguf), "--truncate", "--task", "query", long_text, "hi")
    got = [json.loads(line)["ids"] for line in res.stdout.splitlines()]
    assert got == emb.tokenize([long_text, "hi"], task="query", truncate=True)
    assert len(got[0]) == emb.max_tokens


def test_model_info_json(tiny_gguf):
    res = _run("model", "info", str(tiny_gguf), "--json")
    info = json.loads(res.stdout)
    assert info["architecture"] == "gemma-embedding" and info["tensor_count"] == 30
    assert info["global_layers"] == [1] and info["dense_head"] is True
    assert len(info["sha256"]) == 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "--model", "/nonexistent.gguf", "x"], "no such model file"),
        (["embed", "--model", "{model}", "--task", "bogus", "x"], "unknown task"),
        (["embed", "--model", "{model}", "--dim", "999", "x"], "dim 999"),
        (["embed", "--model", "{model}", "--input", "{bad}"], "not valid JSON"),
    ],
)
def test_errors_are_one_line_and_exit_1(tiny_gguf, tmp_path, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    argv = [a.format(model=tiny_gguf, bad=bad) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", *argv, "--backend", "numpy"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
