"""The recall gate of `eval tradeoffs`: verdicts, exit codes, JSON and JUnit reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.errors import EmbedpipeError
from embedpipe.eval import gate

runner = CliRunner()


def _row(index, quant, dim, same, full, **knobs):
    return {
        "index": index,
        "quant": quant,
        "dim": dim,
        "recall@10_same_dim": same,
        "recall@10": full,
        "n_trees": None,
        "search_k": None,
        "m": None,
        "ef_search": None,
        **knobs,
    }


ROWS = [
    _row("brute", "fp32", 768, 1.0, 1.0),
    _row("hnsw", "int8", 256, 0.97, 0.90, m=16, ef_search=32),
    _row("hnsw", "int8", 256, 0.93, 0.88, m=16, ef_search=16),
]


def test_judge_names_failing_configurations_at_either_reference():
    v = gate.judge(ROWS, 0.95, "same-dim")
    assert [x.config for x in gate.failures(v)] == ["hnsw-int8-d256-m16-ef_search16"]
    assert "hnsw-int8-d256-m16-ef_search16 recall@10_same_dim=0.9300" in gate.summary(v)
    v = gate.judge(ROWS, 0.95, "768")
    assert len(gate.failures(v)) == 2 and gate.summary(v).startswith("recall gate failed: 2 of 3")
    assert not gate.failures(gate.judge(ROWS, 0.5))
    with pytest.raises(EmbedpipeError, match="^at must be one of") as err:
        gate.judge(ROWS, 0.9, "512")
    assert err.value.cli_message().startswith("--at must be one of")
    with pytest.raises(EmbedpipeError, match="between 0 and 1"):
        gate.judge(ROWS, 95, "768")


def test_json_and_junit_reports(tmp_path):
    v = gate.judge(ROWS, 0.95)
    gate.write_json(v, tmp_path / "g.json")
    gate.write_junit(v, tmp_path / "g.xml")
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["passed"] is False and data["failures"] == 1 and len(data["configurations"]) == 3
    suite = ET.parse(tmp_path / "g.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["hnsw-int8-d256-m16-ef_search16"]


def test_cli_exit_codes(emb_dir, tiny_gguf, eval_cache, tmp_path):
    base = [
        "eval",
        "tradeoffs",
        str(emb_dir),
        "--n-queries",
        "10",
        "--dims",
        "64,32",
        "--any-dim",
        "--quants",
        "fp32",
        "--indexes",
        "brute",
        "--cache-dir",
        str(eval_cache),
        "--backend",
        "numpy",
        "--no-progress",
    ]
    ok = runner.invoke(app, base + ["--min-recall", "0.99", "--at", "same-dim", "--junit", str(tmp_path / "ok.xml")])
    assert ok.exit_code == 0, ok.output
    assert ET.parse(tmp_path / "ok.xml").getroot().get("failures") == "0"
    bad = runner.invoke(app, base + ["--min-recall", "0.99", "--at", "768", "--gate-json", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1
    assert "brute-fp32-d32" in bad.stderr and "brute-fp32-d64" not in bad.stderr
    assert json.loads((tmp_path / "bad.json").read_text())["failures"] == 1
    wrong = runner.invoke(app, base + ["--min-recall", "0.9", "--at", "999"])
    assert wrong.exit_code != 0
