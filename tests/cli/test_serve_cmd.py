"""`embedpipe serve` option parsing: help text, bad values as one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.errors import EmbedpipeError
from embedpipe.serve.config import IndexSpec, ModelSpec, ServeConfig, read_api_key
from embedpipe.units import parse_size


def test_help_states_the_default_task():
    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "default task" in out.lower() and "query" in out
    for option in ("--max-batch-tokens", "--max-queue-tokens", "--api-key-file", "--cache-max-bytes", "--long"):
        assert option in out


def test_specs_and_sizes(tmp_path):
    assert ModelSpec.parse("m=/x/model.gguf") == ModelSpec("m", "/x/model.gguf")
    assert ModelSpec.parse("/x/model.gguf") == ModelSpec(None, "/x/model.gguf")
    assert IndexSpec.parse("docs=a.idx") == IndexSpec("docs", "a.idx")
    # a bare path is served under its file name, as a --model path is
    assert IndexSpec.parse("out/a.idx") == IndexSpec("a", "out/a.idx")
    odd = tmp_path / "k=v.idx"  # an existing file with '=' in its name is a path
    odd.write_bytes(b"")
    assert IndexSpec.parse(str(odd)) == IndexSpec("k=v", str(odd))
    for bad in ("=a.idx", "docs=", ""):
        with pytest.raises(EmbedpipeError):
            IndexSpec.parse(bad)
    assert parse_size("4MB") == 4_000_000 and parse_size("2GiB") == 2 << 30 and parse_size("512") == 512
    for bad in ("4 parsecs", "-1", "0", ""):
        with pytest.raises(EmbedpipeError):
            parse_size(bad, "--max-request-bytes")
    key = tmp_path / "key"
    key.write_text("  abc123  \nignored\n")
    assert read_api_key(str(key)) == "abc123"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(EmbedpipeError) as info:
        read_api_key(str(tmp_path / "empty"))
    assert str(info.value).startswith("api_key_file ") and info.value.cli_message().startswith("--api-key-file ")
    with pytest.raises(EmbedpipeError, match="^api_key_file .*cannot read it"):
        read_api_key(str(tmp_path / "missing"))


def test_config_validation():
    with pytest.raises(EmbedpipeError):
        ServeConfig(long="chunk").validate()
    with pytest.raises(EmbedpipeError):
        ServeConfig(default_task="poetry").validate()
    with pytest.raises(EmbedpipeError):
        ServeConfig(indexes=[IndexSpec("a", "x"), IndexSpec("a", "y")]).validate()
    cfg = ServeConfig(api_key="k").validate()
    assert cfg.key_matches("k") and not cfg.key_matches("K") and not cfg.key_matches(None)
    assert cfg.models == [ModelSpec(None, None)]  # the default model


def test_bad_option_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedpipe",
            "serve",
            "--max-request-bytes",
            "lots",
            "--model",
            str(tmp_path / "x.gguf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --max-request-bytes")
    assert len(proc.stderr.strip().splitlines()) == 1


def _serve(*args: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "embedpipe", "serve", "--port", "0", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "{tmp}/x.gguf"], "x.gguf: no such model file"),
        (["--index", "docs={tmp}/none.idx"], "--index docs={tmp}/none.idx: no such index file"),
        (["--index", "docs={tmp}/junk.idx"], "not an embedpipe index"),
        (["--model", "no-such-model"], "neither a GGUF file nor a registered model"),
        (["--port", "-1"], "--port must be in 0..65535, got -1"),  # was reported as an --host problem
    ],
)
def test_startup_errors_come_before_any_server_line(tmp_path, args, needle):
    """A missing model or index, or a file that is not an index, is the only line printed:
    uvicorn never starts."""
    (tmp_path / "junk.idx").write_text("junk")
    proc = _serve(*(a.format(tmp=tmp_path) for a in args))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle.format(tmp=tmp_path) in lines[0]


def test_address_in_use_is_refused_before_start(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve("--port", str(port), "--index", f"d={tmp_path}/none.idx")
        assert "no such index file" in proc.stderr  # files are checked first
        from embedpipe.serve.runner import check_listen

        with pytest.raises(EmbedpipeError, match=f"could not listen on 127.0.0.1:{port}"):
            check_listen("127.0.0.1", port)
