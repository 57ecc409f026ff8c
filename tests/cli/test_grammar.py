"""One grammar: every command that takes a model, an input, an output, a dim, k, a task, threads
or --json spells it the same way (`cli.common.CANONICAL_FLAGS`)."""

from __future__ import annotations

import pytest

from embedpipe.cli.app import COMMANDS, load_command
from embedpipe.cli.common import CANONICAL_FLAGS

# (command path, parameter) whose meaning differs on purpose: a file for the gate's verdicts
EXCEPTIONS: set[tuple[str, str]] = set()
FLAG_OWNER = {flag: name for name, flags in CANONICAL_FLAGS.items() for flag in flags}


def _leaf_commands():
    for name in COMMANDS:
        cmd = load_command(name)
        stack = [(name, cmd)]
        while stack:
            path, c = stack.pop()
            subs = getattr(c, "commands", None)
            if subs:
                stack.extend((f"{path} {n}", sub) for n, sub in subs.items())
            else:
                yield path, c


LEAVES = sorted(_leaf_commands(), key=lambda item: item[0])


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[p for p, _ in LEAVES])
def test_canonical_flags(path, cmd):
    """An option that uses one flag of a canonical group has the whole group (e.g. --model
    always comes with -m), and a parameter named like a canonical one has its flags."""
    for param in cmd.params:
        if param.param_type_name != "option" or (path, param.name) in EXCEPTIONS:
            continue
        flags = set(param.opts) | set(param.secondary_opts)
        for group in {FLAG_OWNER[f] for f in flags if f in FLAG_OWNER}:
            assert set(CANONICAL_FLAGS[group]) <= flags, f"{path}: {sorted(flags)} lacks {CANONICAL_FLAGS[group]}"
        if param.name in CANONICAL_FLAGS:
            assert set(CANONICAL_FLAGS[param.name]) <= flags, (
                f"{path}: {param.name} is not {CANONICAL_FLAGS[param.name]}"
            )


def test_json_is_a_flag_everywhere():
    """--json prints JSON to stdout; it never takes a file name (files go through -o)."""
    for path, cmd in LEAVES:
        for param in cmd.params:
            if "--json" in getattr(param, "opts", ()):
                assert param.is_flag, f"{path}: --json takes a value"


def test_commands_taking_a_model_are_found():
    with_model = [path for path, cmd in LEAVES if any(p.name == "model" for p in cmd.params)]
    assert {"embed", "tokenize", "ingest", "search", "eval retrieval", "eval tradeoffs"} <= set(with_model)


def test_long_running_commands_can_silence_their_progress_bars():
    """Every command that draws a progress bar takes --progress/--no-progress (logs and CI)."""
    with_progress = {
        path
        for path, cmd in LEAVES
        for p in cmd.params
        if "--progress" in getattr(p, "opts", ()) and "--no-progress" in getattr(p, "secondary_opts", ())
    }
    long_running = {"ingest", "build-index", "eval tradeoffs", "eval retrieval", "model pull", "model convert"}
    assert long_running | {"index compact"} <= with_progress
