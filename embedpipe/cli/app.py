"""The `embedpipe` command: a thin Typer shell over the Python API.

Each command group lives in its own module exposing `register(app)`; `COMMANDS` below is the
only place that knows which commands exist. A command's module is imported only when that
command runs (or its own --help is asked for): `embedpipe --help` and `--version` never import
numpy, gguf, pyarrow or the pipeline.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, NamedTuple

import typer
from typer.core import TyperGroup

from embedpipe import __version__
from embedpipe.cli.errors import run_cli
from embedpipe.cli.plain_params import install as install_plain_params
from embedpipe.cli.plain_params import install_param as install_plain_param


class CommandEntry(NamedTuple):
    module: str
    summary: str  # the line `embedpipe --help` shows, so listing needs no import


COMMANDS: dict[str, CommandEntry] = {
    "embed": CommandEntry(
        "embedpipe.cli.embed_cmd", "Embed texts (arguments, --input or stdin) to JSON, .npy, .jsonl or .parquet."
    ),
    "tokenize": CommandEntry("embedpipe.cli.embed_cmd", "Print the token ids of texts as JSON lines."),
    "ingest": CommandEntry("embedpipe.cli.ingest_cmd", "Embed a corpus into a resumable Parquet dataset."),
    "build-index": CommandEntry("embedpipe.cli.index_cmd", "Build a brute/annoy/hnsw index from ingest output."),
    "search": CommandEntry("embedpipe.cli.index_cmd", "Search an index with text queries or vectors."),
    "serve": CommandEntry("embedpipe.cli.serve_cmd", "OpenAI-compatible embedding and search server."),
    "model": CommandEntry("embedpipe.cli.model_cmd", "List, pull, locate, convert and describe models."),
    "index": CommandEntry("embedpipe.cli.index_admin_cmd", "Inspect and maintain index files (info, delete, compact)."),
    "eval": CommandEntry("embedpipe.cli.eval_cmd", "Recall/size/latency trade-offs and retrieval quality (BEIR)."),
    "cache": CommandEntry("embedpipe.cli.cache_cmd", "Inspect and clear the embedding cache."),
    "bench": CommandEntry("embedpipe.cli.bench_cmd", "Benchmarks: same-run medians and ratios to peers."),
}
# kept for callers that iterate the command modules (each listed once, in COMMANDS order)
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(e.module for e in COMMANDS.values()))


def load_command(name: str) -> Any:
    """The click command `name`, built from its module's `register(app)`, its plain options
    parsed without pydantic (`plain_params`)."""
    scratch = typer.Typer(rich_markup_mode=None)
    importlib.import_module(COMMANDS[name].module).register(scratch)
    return install_plain_params(typer.main.get_group(scratch).commands[name])


class LazyGroup(TyperGroup):
    """The root group: commands come from `COMMANDS`, loaded on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def get_help_option(self, ctx: Any) -> Any:
        return install_plain_param(super().get_help_option(ctx))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in COMMANDS.items()])


app = typer.Typer(
    name="embedpipe",
    cls=LazyGroup,
    help="CPU embedding pipeline: GGUF models on JIT kernels, streaming ingest, vector indexes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"embedpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose or os.environ.get("EMBEDPIPE_DEBUG") else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


#: OpenBLAS's worker threads spin for 2**28 cycles (~0.1 s) after they start and after every
#: call before they sleep. Nothing on the JIT path calls BLAS, so in the command's own process
#: that spin is only a core's worth of wasted CPU at every start; 2**4 cycles (OpenBLAS's
#: minimum) lets them sleep at once. Set before any command imports numpy; a value the user
#: set stays.
OPENBLAS_SPIN = ("OPENBLAS_THREAD_TIMEOUT", "4")


def main() -> None:
    os.environ.setdefault(*OPENBLAS_SPIN)
    sys.exit(run_cli(app, sys.argv[1:]))
