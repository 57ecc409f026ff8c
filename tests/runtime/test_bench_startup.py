"""`embedpipe bench startup`: commands run as fresh processes, each reporting its own peak RSS
(no timings asserted)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.runtime import bench_startup


def test_a_child_reports_its_own_peak_rss():
    ballast = bytearray(300 << 20)  # the parent is big; a forked child's ru_maxrss would say so
    wall, cpu, rss = bench_startup.run_once(["--help"], dict(os.environ))
    assert wall > 0 and cpu > 0 and 0 < rss < 300
    del ballast


def test_a_failing_command_is_an_error():
    with pytest.raises(RuntimeError, match="exited 2"):
        bench_startup.run_once(["no-such-command"], dict(os.environ))


@pytest.mark.slow
def test_bench_startup_json(tiny_gguf):
    res = CliRunner().invoke(app, ["bench", "startup", "--model", str(tiny_gguf), "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert [r["command"] for r in summary["results"]] == ["help", "embed", "search"]
    for r in summary["results"]:
        assert r["runs"] == 1 and r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 0
