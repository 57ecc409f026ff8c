"""Plain option values are parsed without pydantic, exactly as typer's own adapters parse them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedpipe.cli import plain_params
from embedpipe.cli.app import COMMANDS, app, load_command

typer_coercion = pytest.importorskip("typer._coercion")
if plain_params.RuntimeParam is None:  # pragma: no cover - older typer: nothing to replace
    pytest.skip("this typer has no runtime coercion layer", allow_module_level=True)


def _leaf_params():
    for name in COMMANDS:
        stack = [(name, load_command(name))]
        while stack:
            path, cmd = stack.pop()
            stack.extend((f"{path} {n}", sub) for n, sub in getattr(cmd, "commands", {}).items())
            for param in cmd.params:
                yield path, param


def test_every_option_of_every_command_is_plain():
    """No embedpipe option needs pydantic: a new option of another kind shows up here (give it
    a converter in `plain_params.CONVERTERS`, or accept the start-up cost knowingly)."""
    left = [f"{path} {p.name}" for path, p in _leaf_params() if p._runtime_param is None]
    assert left == []


def _outcome(runtime, param, value):
    try:
        return "ok", runtime.coerce(value, param=param, ctx=None)
    except Exception as exc:  # the BadParameter message is what the user reads
        return "error", type(exc).__name__, exc.message


CASES = {
    int: ["3", " 4 ", "-1", "0", "abc", "1.5", "", "12345678901234567890", 7],
    float: ["0.5", "1e3", "-2", "abc", "", " 3 ", 2.5],
    str: ["x", "", "with space", "é"],
    Path: ["a/b.npy", "-", "", "/tmp"],
    bool: ["true", "False", "1", "0", "yes", "no", "maybe", True, False],
}


@pytest.mark.parametrize(
    "annotation,low",
    [(a, None) for a in CASES] + [(int, 1), (float, 1)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_same_values_and_messages_as_typer(annotation, low):
    from typer.core import TyperOption
    from typer.models import OptionInfo

    info = OptionInfo(min=low)
    descriptor = typer_coercion.resolve_type_descriptor(annotation, info)
    param = TyperOption(param_decls=["--x"], type_descriptor=descriptor)
    ours = plain_params.plain_runtime_param(descriptor)
    theirs = typer_coercion.build_runtime_param(descriptor)
    assert ours is not None
    for value in CASES[annotation]:
        assert _outcome(ours, param, value) == _outcome(theirs, param, value), repr(value)


@pytest.mark.parametrize("item", [Path, str])
def test_lists_as_typer_gives_them(item):
    from typer.core import TyperArgument
    from typer.models import ArgumentInfo

    descriptor = typer_coercion.resolve_type_descriptor(list[item], ArgumentInfo())
    param = TyperArgument(param_decls=["files"], type_descriptor=descriptor, nargs=-1)
    ours = plain_params.plain_runtime_param(descriptor)
    theirs = typer_coercion.build_runtime_param(descriptor)
    for value in (("a", "b"), (), None, ["x"]):
        assert _outcome(ours, param, value) == _outcome(theirs, param, value), value
    assert ours.coerce(("a", "b"), param=param, ctx=None) == [item("a"), item("b")]


def test_settings_typer_must_handle_are_left_to_it():
    from typer.models import OptionInfo

    for info in (OptionInfo(exists=True), OptionInfo(parser=int), OptionInfo(clamp=True, min=1), OptionInfo(max=3)):
        descriptor = typer_coercion.resolve_type_descriptor(Path if info.exists else str, info)
        assert plain_params.plain_runtime_param(descriptor) is None


def test_search_and_embed_do_not_import_pydantic(tmp_path):
    """Parsing a command line must not pull pydantic in (it is most of a short command's
    start-up); a usage error goes through the same parsing."""
    code = (
        "import sys\nfrom embedpipe.cli.app import app\nfrom embedpipe.cli.errors import run_cli\n"
        f"run_cli(app, ['search', {str(tmp_path / 'missing.idx')!r}, 'q', '-k', '3', '--threads', '1'])\n"
        "run_cli(app, ['embed', '-k', 'x'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
    assert "error:" in out.stderr and "Traceback" not in out.stderr


def _leaf_paths():
    for name in COMMANDS:
        stack = [([name], load_command(name))]
        while stack:
            path, cmd = stack.pop()
            subs = getattr(cmd, "commands", {})
            stack.extend(([*path, n], sub) for n, sub in subs.items())
            if not subs:
                yield path


@pytest.mark.parametrize("path", list(_leaf_paths()), ids=" ".join)
def test_help_shows_no_type_labels(path, capsys):
    """--help names values by metavar (TEXT, N, PATH, INDEX), never typer's <str>, <int range>,
    <list[str]> labels or {ARG} usage braces."""
    import re

    from embedpipe.cli.errors import run_cli

    assert run_cli(app, [*path, "--help"]) == 0
    out = capsys.readouterr().out
    usage = out.splitlines()[0]
    assert "{" not in usage and "...]..." not in usage and "......" not in usage, usage
    assert not re.search(r"<(bool|str|int|float|path|file|dir|list\[[a-z]+\])[a-z ]*>", out), out
