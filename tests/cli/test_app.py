"""The root command: lazy command modules, --version, one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embedpipe import __version__
from embedpipe.cli.app import COMMANDS, app, load_command
from embedpipe.cli.errors import run_cli

HEAVY_MODULES = ("numpy", "gguf", "pyarrow", "embedpipe.pipeline", "embedpipe.indexes", "embedpipe.runtime", "rich")


def _modules_after(*args: str) -> set[str]:
    code = (
        "import sys, json\n"
        "from embedpipe.cli.app import app\n"
        "from embedpipe.cli.errors import run_cli\n"
        f"code = run_cli(app, {list(args)!r})\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(res.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_root_help_imports_no_heavy_module(args):
    loaded = _modules_after(*args)
    assert not [m for m in HEAVY_MODULES if m in loaded]


def test_every_command_loads_and_has_help():
    for name in COMMANDS:
        cmd = load_command(name)
        assert cmd.name == name
        assert cmd.help or cmd.short_help


def _params(cmd, path: tuple[str, ...]):
    """(command path, parameter) of a command and of every subcommand of a group."""
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _params(sub, (*path, name))
    for param in cmd.params:
        yield path, param


def test_every_model_option_takes_a_registered_name_or_a_path():
    """Consistent flags: each --model that loads a model says it takes a registry name too
    (`cache`'s --model filters entries by SHA-256 instead)."""
    seen = []
    for name in COMMANDS:
        for path, param in _params(load_command(name), (name,)):
            if "--model" in getattr(param, "opts", ()) and path[0] != "cache":
                seen.append(path)
                assert "registered" in (param.help or ""), path
                assert (param.help or "").lower().count("default") == 1, path  # one default, stated once
    assert ("bench", "ingest") in seen and ("embed",) in seen


# Config fields no command-line flag sets (positional arguments, API-only knobs, --no-cache)
API_ONLY = {"ingest": {"inputs", "sort_window", "read_rows", "cache"}, "serve": {"cache_memory_bytes", "warmup"}}


@pytest.mark.parametrize("command", sorted(API_ONLY))
def test_config_errors_name_flags_the_command_has(command):
    """An ArgumentError about a config field is shown with `cli_flag(field)`: that flag exists."""
    import dataclasses

    from embedpipe.errors import cli_flag
    from embedpipe.pipeline.config import IngestConfig
    from embedpipe.serve.config import ServeConfig

    config = {"ingest": IngestConfig, "serve": ServeConfig}[command]
    flags = {flag for param in load_command(command).params for flag in getattr(param, "opts", ())}
    unknown = {f.name for f in dataclasses.fields(config) if cli_flag(f.name) not in flags}
    assert unknown == API_ONLY[command]


def test_a_bad_batch_size_names_the_flag_it_came_from(tmp_path, capsys):
    assert run_cli(app, ["ingest", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "o"), "--batch-size", "0"]) != 0
    assert "--batch-size must be positive" in capsys.readouterr().err


def test_version(capsys):
    assert run_cli(app, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"embedpipe {__version__}"


@pytest.mark.parametrize(
    "args",
    [["search", "--bogus"], ["nosuchcommand"], ["embed", "-d", "abc", "x"], ["build-index"], ["model", "info"]],
)
def test_usage_errors_are_one_line_exit_2(args, capsys):
    assert run_cli(app, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err
    assert "Traceback" not in err


def test_plain_help_has_no_type_noise():
    for name in COMMANDS:
        res = subprocess.run(
            [sys.executable, "-m", "embedpipe", name, "--help"], capture_output=True, text=True, check=True
        )
        assert "<bool>" not in res.stdout and "╭" not in res.stdout, name


def test_embed_refuses_a_batch_size_below_one(tiny_gguf, capsys):
    assert run_cli(app, ["embed", "-m", str(tiny_gguf), "--batch-size", "0", "x"]) != 0
    assert "--batch-size must be positive, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bench", "runtime", "--peer", "jit,nope"], "unknown peer(s) nope; choose from jit,"),
        (["bench", "kernels", "--tokens", "16,0"], "--tokens must be >= 1"),
        (["bench", "index", "--n", "1"], "--n"),
    ],
)
def test_bench_flags_are_checked_before_any_work(args, needle, capsys):
    """A mistyped peer was skipped as if it could not run here; --tokens 0 failed deep inside."""
    assert run_cli(app, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
