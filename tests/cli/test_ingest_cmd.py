"""The `embedpipe ingest` command: summary on stdout, user errors as one line and exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.pipeline.test_resume import REPO, env


def ingest_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from embedpipe.cli.app import main; main()", "ingest", *args],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
    )


def test_cli_summary_and_refusal(corpus, tiny_gguf, tmp_path):
    out = tmp_path / "o"
    base = [str(corpus), "-o", str(out), "--model", str(tiny_gguf), "--backend", "numpy", "--no-cache", "--no-progress"]
    done = ingest_cli(*base, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["output_rows"] == 120 and summary["parts"] == 1
    refused = ingest_cli(*base, "--task", "query")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: refusing to resume") and "Traceback" not in refused.stderr
    bad = ingest_cli(*base, "--long", "sideways")
    assert bad.returncode == 1 and "--long must be one of chunk, truncate, error" in bad.stderr
