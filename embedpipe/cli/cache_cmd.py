"""`embedpipe cache info|clear`: look at and prune the ingest embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import cache_dir_option
from embedpipe.pipeline.cache import EmbeddingCache, file_bytes, model_prefix

cache_app = typer.Typer(help="The embedding cache that ingest and eval share (SQLite, one file).", no_args_is_help=True)


@cache_app.command("info")
def info_cmd(cache_dir: Optional[Path] = cache_dir_option()) -> None:
    """Where the cache is, its size on disk, and entries per model and dim."""
    cache = EmbeddingCache.in_dir(cache_dir)
    try:
        groups = cache.summary()
        typer.echo(f"{cache.path}  {file_bytes(cache.path) / 1e6:.1f} MB on disk")
        typer.echo(f"{'model sha256':<16} {'dim':>5} {'entries':>9} {'MB':>9}")
        for g in groups:
            typer.echo(f"{g.model[:16]:<16} {g.dim:>5} {g.entries:>9} {g.bytes / 1e6:>9.1f}")
        typer.echo(
            f"{'total':<16} {'':>5} {sum(g.entries for g in groups):>9} {sum(g.bytes for g in groups) / 1e6:>9.1f}"
        )
    finally:
        cache.close()
    _derived_info()


def _derived_info() -> None:
    """The load-time caches: repacked weights (per model file), tokenizer models, compiled kernels."""
    from embedpipe.codegen import jit
    from embedpipe.runtime import tokenizer, weight_cache

    files = weight_cache.list_files()
    typer.echo(
        f"\n{weight_cache.weights_dir()}  repacked weights: {len(files)} files, "
        f"{sum(f.bytes for f in files) / 1e6:.1f} MB (bound {weight_cache.max_bytes() / 1e6:.0f} MB)"
    )
    for f in files:
        typer.echo(f"  {f.bytes / 1e6:>9.1f} MB  {f.model}  [{f.identity}]")
    models = tokenizer.cache_files()
    typer.echo(
        f"{tokenizer.tokenizer_cache_dir()}  tokenizer models: {len(models)} files, "
        f"{sum(p.stat().st_size for p in models) / 1e6:.1f} MB (bound {tokenizer.CACHE_MAX_BYTES / 1e6:.0f} MB)"
    )
    kernels = jit.cache_files()
    typer.echo(
        f"{jit.cache_dir()}  compiled kernels: {len(kernels)} files, "
        f"{sum(p.stat().st_size for p in kernels) / 1e6:.1f} MB"
    )


@cache_app.command("clear")
def clear_cmd(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Only entries of the model whose SHA-256 starts with this (see `cache info`)."
    ),
    cache_dir: Optional[Path] = cache_dir_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    load_caches: bool = typer.Option(
        False,
        "--load-caches",
        help="Delete the repacked-weight, tokenizer-model and compiled-kernel caches instead "
        "(rebuilt on the next model load).",
    ),
) -> None:
    """Delete cached embeddings (all, or one model's) and shrink the file."""
    if load_caches:
        _clear_load_caches(yes)
        return
    try:
        prefix = model_prefix(model) if model is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    cache = EmbeddingCache.in_dir(cache_dir)
    try:
        what = f"entries of model {model}…" if model else "all entries"
        if not yes and not typer.confirm(f"Delete {what} in {cache.path}?"):
            raise typer.Exit(1)
        before = file_bytes(cache.path)
        n = cache.clear(prefix)
        typer.echo(f"deleted {n} entries; {before / 1e6:.1f} MB -> {file_bytes(cache.path) / 1e6:.1f} MB")
    finally:
        cache.close()


def _clear_load_caches(yes: bool) -> None:
    from embedpipe.codegen import jit
    from embedpipe.runtime import tokenizer, weight_cache

    where = f"{weight_cache.weights_dir()}, {tokenizer.tokenizer_cache_dir()} and {jit.cache_dir()}"
    if not yes and not typer.confirm(f"Delete {where}?"):
        raise typer.Exit(1)
    n, size = weight_cache.clear()
    models = tokenizer.cache_files()
    size += sum(p.stat().st_size for p in models)
    for p in models:
        p.unlink(missing_ok=True)
    kernels, kernel_bytes = jit.clear_cache()
    typer.echo(
        f"deleted {n} repacked-weight files, {len(models)} tokenizer models and {kernels} kernel files "
        f"({(size + kernel_bytes) / 1e6:.1f} MB)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
