"""`embedpipe bench kernels` (runs the kernel benchmark and reports same-run figures) and `bench index`
plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from embedpipe.cli.app import app

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
