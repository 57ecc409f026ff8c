"""The search kernels' own bounds checks: with the load-time validator switched off (as if it
had a bug), corrupt HNSW graphs and Annoy trees end in one clean IndexFileError — never a signal,
a hang or another exception. Each kind runs in a subprocess, so a crash fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedpipe.indexes.annoy_kernel import ANNOY_SEARCH
from embedpipe.indexes.hnsw_kernel import HNSW_SEARCH
from tests.indexes.kernel_bounds_worker import ANNOY_CASES, HNSW_CASES

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> list[dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.indexes.kernel_bounds_worker", *args, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"worker exited {proc.returncode} after {len(results)} cases: {proc.stderr[-2000:]}"
    return results


def _assert_clean(results: list[dict[str, str]], cases: dict) -> None:
    assert [r["case"] for r in results] == list(cases)
    bad = [r for r in results if r["outcome"] != "IndexFileError"]
    assert not bad, bad
    for r in results:
        msg = r["message"]
        assert "\n" not in msg and len(msg) <= 300 and msg.isprintable(), msg
        assert "rebuild the index" in msg


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_hnsw_kernel_stops_on_corrupt_graphs(tmp_path, quant):
    if HNSW_SEARCH[quant].native() is None:
        pytest.skip("no native kernel on this machine")
    _assert_clean(_run(tmp_path, "hnsw", quant), HNSW_CASES)


def test_annoy_kernel_stops_on_corrupt_trees(tmp_path):
    if ANNOY_SEARCH.native() is None:
        pytest.skip("no native kernel on this machine")
    _assert_clean(_run(tmp_path, "annoy", "fp32"), ANNOY_CASES)
