"""`embedpipe model ...`: list, fetch, locate, convert and describe models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import progress_option
from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.gguf_names import QUANTS

QUANT_HELP = f"Weight type of the GGUF: {', '.join(QUANTS)} (norms and 1-D tensors stay F32; default q8_0)."
NAME_HELP = (
    "Registered model (`embedpipe model list`), optionally NAME:QUANT as --model takes it; default: the default model."
)

model_app = typer.Typer(
    name="model",
    help="List, fetch, locate and convert the registered embedding models (EmbeddingGemma-300M, "
    "all-MiniLM-L6-v2, all-mpnet-base-v2) and convert sentence-transformers checkouts.",
    no_args_is_help=True,
)


def _quant(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if value not in QUANTS:
        raise typer.BadParameter(f"choose one of {', '.join(QUANTS)}")
    return value


@model_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print one JSON array.")) -> None:
    """Every registered model: architecture, pooling, max length, dims, prompts, licence, cached quants."""
    import json

    from embedpipe.runtime.registry import listing

    rows = listing()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        dims = "/".join(str(d) for d in r["dims"])
        cached = ",".join(r["cached"]) or "-"
        typer.echo(
            f"{mark} {r['name']:<22} {r['architecture']:<16} {r['pooling']:<5} max {r['max_seq_length']:<5} "
            f"dims {dims:<16} prompts {r['prompts']:<15} cached {cached:<12} {r['licence']}"
        )


@model_app.command(
    "pull",
    help=(
        "Fetch a registered embedding model and cache it as a GGUF of --quant weights; prints its path. "
        "NAME is one of `embedpipe model list`: embeddinggemma-300m (Google EmbeddingGemma-300M, 768-d, "
        "Matryoshka 512/256/128, 2048 tokens, the default), all-minilm-l6-v2 (sentence-transformers MiniLM, 384-d) "
        "or all-mpnet-base-v2 (sentence-transformers MPNet, 768-d). The sentence-transformers checkout is checked "
        "file by file against pinned SHA-256s before it is converted. Idempotent: a valid cache is left alone, "
        "a partial or corrupt one is repaired. Cache: $EMBEDPIPE_CACHE_DIR or the user cache dir. "
        "EmbeddingGemma is provided under Google's Gemma terms of use (https://ai.google.dev/gemma/terms); "
        "by pulling it you agree to them."
    ),
)
def pull(
    name: Optional[str] = typer.Argument(None, help=NAME_HELP),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", callback=_quant, help=QUANT_HELP),
    force: bool = typer.Option(False, "--force", help="Re-download and re-convert even if the cache is valid."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every cached file instead of trusting the stamps."),
    progress: bool = progress_option(),
) -> None:
    from embedpipe.runtime import registry, store

    entry, quant = registry.named_quant(name, quant)
    typer.echo(f"{entry.name}: licence {entry.licence}" + (f"; {entry.notice}" if entry.notice else ""), err=True)
    path = store.pull(quant, force=force, verify=verify, progress=progress, spec=entry.spec, metadata=entry.metadata)
    typer.echo(str(path))


@model_app.command("path")
def path(
    name: Optional[str] = typer.Argument(None, help=NAME_HELP),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", callback=_quant, help=QUANT_HELP),
) -> None:
    """Print the cached GGUF path; exit 1 if it has not been pulled (or is damaged)."""
    from embedpipe.runtime import registry, store

    entry, quant = registry.named_quant(name, quant)
    found = store.cached_model_path(quant, entry.spec)
    if found is None:
        raise EmbedpipeError(
            f"no valid cached {entry.name} {quant} model at {store.gguf_path(quant, entry.spec)}; "
            f"run `embedpipe model pull {entry.name} --quant {quant}`"
        )
    typer.echo(str(found))


@model_app.command("convert")
def convert(
    src_dir: Path = typer.Argument(
        ...,
        help="sentence-transformers checkout: EmbeddingGemma (Gemma3TextModel) or a "
        "BERT-family encoder (BertModel: MiniLM, bge, e5, gte, arctic-embed; MPNet).",
    ),
    quant: str = typer.Option("q8_0", "--quant", "-q", callback=_quant, help=QUANT_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="GGUF file to write (atomically)."),
    prompts: str = typer.Option(
        "none", "--prompts", help="Prompt convention recorded for BERT-family models: none, e5, bge-en, embeddinggemma."
    ),
    progress: bool = progress_option(),
) -> None:
    """Convert a checkout to GGUF with llama.cpp's names, keys and quantization (MPNet: embedpipe's own arch)."""
    from embedpipe.runtime.convert import convert_checkout
    from embedpipe.runtime.prompts import scheme

    scheme(prompts)
    typer.echo(str(convert_checkout(src_dir, output, quant, progress=progress, metadata={"prompts": prompts})))


@model_app.command("info")
def info(
    model: str = typer.Argument(..., help="GGUF model file or registered model name."),
    as_json: bool = typer.Option(False, "--json", help="Print everything (every tensor too) as one JSON object."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the file's SHA-256 (hashing 300 MB takes ~1 s)."),
) -> None:
    """Architecture, hyper-parameters, tensor count, quant mix, tokenizer and SHA-256 of a GGUF model."""
    import json

    from embedpipe.runtime.model_info import format_info, model_info
    from embedpipe.runtime.registry import registered_name, resolve_model

    path = resolve_model(model)
    details = model_info(path, with_sha256=not no_hash, name=registered_name(path))
    typer.echo(json.dumps(details, indent=1) if as_json else format_info(details))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
