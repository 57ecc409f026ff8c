"""`embedpipe cache info|clear`: look at and prune the ingest embedding cache and the load caches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import cache_dir_option
from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.cache import (
    EmbeddingCache,
    ModelSelector,
    existing_cache_path,
    file_bytes,
    read_summary,
    select_model,
)

cache_app = typer.Typer(help="The embedding cache that ingest and eval share (SQLite, one file).", no_args_is_help=True)

ROOT_HELP = (
    "Cache directory: its embedding cache and, under it, the load caches (weights/, tokenizers/, "
    "gguf_index/, kernels/), whatever the environment says (default: env EMBEDPIPE_CACHE_DIR, else the user cache dir)."
)
CLEAR_MODEL_HELP = (
    "Only this model's entries: a GGUF model file or registered model name, e.g. all-minilm-l6-v2 or "
    "all-minilm-l6-v2:f32 (never downloaded), or a SHA-256 prefix of at least 4 hex digits as `cache info` "
    "shows it (default: all models)."
)


@cache_app.command("info")
def info_cmd(cache_dir: Optional[Path] = cache_dir_option(ROOT_HELP)) -> None:
    """Where the caches are, their size on disk, and embedding entries per model and dim.

    With --cache-dir, the embedding cache and the load caches under that directory. Only
    reads: nothing is created, not even for a directory that holds no cache."""
    path = existing_cache_path(cache_dir)
    groups = read_summary(path)
    if groups is None:
        typer.echo(f"{path}  no embedding cache: nothing cached")
    else:
        typer.echo(f"{path}  {file_bytes(path) / 1e6:.1f} MB on disk")
        typer.echo(f"{'model sha256':<16} {'dim':>5} {'entries':>9} {'MB':>9}")
        for g in groups:
            typer.echo(f"{g.model[:16]:<16} {g.dim:>5} {g.entries:>9} {g.bytes / 1e6:>9.1f}")
        typer.echo(
            f"{'total':<16} {'':>5} {sum(g.entries for g in groups):>9} {sum(g.bytes for g in groups) / 1e6:>9.1f}"
        )
    _load_caches_info(cache_dir)


def _load_caches_info(cache_dir: Optional[Path]) -> None:
    """The load-time caches: repacked weights (per model file), tokenizer models, GGUF offsets, compiled kernels."""
    from embedpipe.runtime import load_caches

    found = load_caches.survey(cache_dir)
    typer.echo(
        f"\n{found.weights_dir}  repacked weights: {len(found.weights)} files, "
        f"{found.weight_bytes / 1e6:.1f} MB (bound {found.weights_max_bytes / 1e6:.0f} MB)"
    )
    for f in found.weights:
        typer.echo(f"  {f.bytes / 1e6:>9.1f} MB  {f.model}  [{f.identity}]")
    typer.echo(
        f"{found.tokenizers_dir}  tokenizer models: {len(found.tokenizers)} files, "
        f"{found.tokenizer_bytes / 1e6:.1f} MB (bound {found.tokenizers_max_bytes / 1e6:.0f} MB)"
    )
    typer.echo(
        f"{found.gguf_index_dir}  GGUF string offsets: {len(found.gguf_index)} files, "
        f"{found.gguf_index_bytes / 1e6:.1f} MB (newest {found.gguf_index_kept} kept)"
    )
    typer.echo(f"{found.kernels_dir}  compiled kernels: {len(found.kernels)} files, {found.kernel_bytes / 1e6:.1f} MB")


def _confirm(question: str) -> None:
    """Ask on stdin; anything but yes (a closed or empty stdin included) deletes nothing.
    Ctrl-C is left to the CLI (interrupted, exit 130)."""
    typer.echo(f"{question} [y/N]: ", nl=False)
    line = sys.stdin.readline()
    if not line:  # end of input: no one to ask
        typer.echo()
        raise EmbedpipeError("aborted, nothing deleted (no answer on stdin; pass -y/--yes to delete without asking)")
    if line.strip().lower() not in ("y", "yes"):
        raise EmbedpipeError("aborted, nothing deleted")


@cache_app.command("clear")
def clear_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=CLEAR_MODEL_HELP, metavar="MODEL"),
    cache_dir: Optional[Path] = cache_dir_option(ROOT_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    load_caches: bool = typer.Option(
        False,
        "--load-caches",
        help="Delete the repacked-weight, tokenizer-model, GGUF-offset and compiled-kernel caches instead "
        "(rebuilt on the next model load); with -m only that model's repacked weights "
        "(tokenizer models and kernels are shared between models).",
    ),
) -> None:
    """Delete cached embeddings (all, or one model's) and shrink the file.

    With --load-caches, the load caches instead; with --cache-dir, only what is under that
    directory. Asks first unless -y; no answer deletes nothing."""
    try:
        selected = select_model(model) if model is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if load_caches:
        _clear_load_caches(cache_dir, model, selected, yes)
        return
    path = existing_cache_path(cache_dir)
    if not path.is_file():
        typer.echo(f"{path}: no embedding cache, nothing to delete")
        return
    what = f"the entries of model {model}" if model else "all entries"
    if not yes:
        _confirm(f"Delete {what} in {path}?")
    cache = EmbeddingCache(path)
    try:
        before = file_bytes(cache.path)
        n = cache.clear(selected.sha256_prefix if selected else None)
        typer.echo(f"deleted {n} entries; {before / 1e6:.1f} MB -> {file_bytes(cache.path) / 1e6:.1f} MB")
    finally:
        cache.close()


def _clear_load_caches(
    cache_dir: Optional[Path], model: Optional[str], selected: Optional[ModelSelector], yes: bool
) -> None:
    from embedpipe.runtime import load_caches

    if cache_dir is not None:
        existing_cache_path(cache_dir)  # a directory that does not exist is a typo, not an empty cache
    if selected is not None:
        where = f"the repacked weights of model {model} in {load_caches.places(cache_dir)[0]}"
        matcher = load_caches.model_matcher(selected.sha256_prefix, selected.path)
    else:
        where = ", ".join(str(p) for p in load_caches.places(cache_dir))
        matcher = None
    if not yes:
        _confirm(f"Delete {where}?")
    done = load_caches.clear(cache_dir, matcher)
    if done.shared_kept:
        typer.echo(
            f"deleted {done.weights} repacked-weight files of model {model} ({done.bytes / 1e6:.1f} MB); "
            "tokenizer models and compiled kernels are shared between models and were kept"
        )
        return
    typer.echo(
        f"deleted {done.weights} repacked-weight files, {done.tokenizers} tokenizer models, {done.gguf_index} "
        f"GGUF offset files and {done.kernels} kernel files ({done.bytes / 1e6:.1f} MB)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
