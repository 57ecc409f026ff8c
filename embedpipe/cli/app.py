"""The `embedpipe` command: a thin Typer shell over the Python API.

Each command group lives in its own module exposing `register(app)`; the table below is the
only place that knows which groups exist.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from embedpipe.errors import EmbedpipeError

COMMAND_MODULES: tuple[str, ...] = (
    "embedpipe.cli.model_cmd",
    "embedpipe.cli.embed_cmd",
    "embedpipe.cli.ingest_cmd",
    "embedpipe.cli.bench_cmd",
    "embedpipe.cli.index_cmd",
    "embedpipe.cli.index_admin_cmd",
    "embedpipe.cli.eval_cmd",
    "embedpipe.cli.cache_cmd",
    "embedpipe.cli.serve_cmd",
)

app = typer.Typer(
    name="embedpipe",
    help="CPU embedding pipeline: GGUF models on JIT kernels, streaming ingest, vector indexes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose or os.environ.get("EMBEDPIPE_DEBUG") else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    try:
        app()
    except EmbedpipeError as exc:
        # Errors about the user's inputs: one line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
