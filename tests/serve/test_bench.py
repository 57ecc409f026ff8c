"""`embedpipe bench serve` end to end on the tiny model (embedpipe peer only; llama.cpp cannot load it)."""

from __future__ import annotations

import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.serve.bench import ServeBenchConfig, format_summary, run_serve_bench


def test_bench_serve_reports_cells_ratios_and_agreement(wide_model):
    cfg = ServeBenchConfig(
        model=str(wide_model),
        threads=1,
        kinds=("short",),
        concurrency=(1, 4),
        peers=("embedpipe",),
        requests=16,
        max_seconds=60,
    )
    summary = run_serve_bench(cfg, report=lambda line: None)
    cells = [(c["peer"], c["kind"], c["concurrency"]) for c in summary["cells"]]
    assert cells == [("embedpipe", "short", 1), ("embedpipe", "short", 4)]
    assert all(c["errors"] == 0 and c["requests"] == 16 and c["p50_ms"] > 0 for c in summary["cells"])
    assert summary["cells"][0]["requests_per_pass"] == 1.0
    assert summary["agreement"]["embedpipe"]["short"] >= 0.9999
    assert summary["skipped"] == {}
    assert [r["concurrency"] for r in summary["ratios"]] == [1, 4]
    assert all(r["of_in_process_encode"] > 0 for r in summary["ratios"])
    assert any(line.startswith("ratios short c=4") for line in format_summary(summary))


def test_bench_serve_command_defaults_its_threads(wide_model):
    import json

    from typer.testing import CliRunner

    from embedpipe.cli.app import app

    args = ["bench", "serve", "--model", str(wide_model), "--peer", "embedpipe", "--concurrency", "1"]
    res = CliRunner().invoke(app, [*args, "--kind", "short", "--requests", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert [(c["peer"], c["errors"]) for c in summary["cells"]] == [("embedpipe", 0)]
    assert summary["cells"][0]["requests"] >= 2


@pytest.mark.parametrize(
    "kw, match",
    [
        # a mistyped server was "skipped" and the run went on; bench runtime refuses such a peer
        ({"peers": ("embedpipe", "nonesuch")}, r"unknown peer\(s\) nonesuch; choose from embedpipe, llama.cpp"),
        ({"kinds": ("huge",)}, r"unknown kind\(s\) huge"),
        ({"max_seconds": -1.0}, "max_seconds must be positive, got -1.0"),
        ({"max_seconds": 0.0}, "max_seconds must be positive"),
        ({"requests": 0}, "requests must be >= 1"),
        ({"concurrency": (1, 0)}, "concurrency must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
    ],
)
def test_a_config_that_would_time_nothing_is_refused_before_any_server_starts(tmp_path, kw, match):
    cfg = ServeBenchConfig(**{"model": str(tmp_path / "never-opened.gguf"), "threads": 1, **kw})
    with pytest.raises(EmbedpipeError, match=match):
        run_serve_bench(cfg, report=lambda line: None)
