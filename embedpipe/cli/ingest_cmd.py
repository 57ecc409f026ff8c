"""`embedpipe ingest`: a thin shell over embedpipe.pipeline.ingest."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import (
    any_dim_option,
    backend_option,
    cache_dir_option,
    cache_max_bytes_option,
    dim_option,
    json_option,
    model_option,
    output_option,
    progress_option,
    task_option,
    threads_option,
)
from embedpipe.errors import EmbedpipeError
from embedpipe.jsonl import STDIN
from embedpipe.units import parse_size


def ingest(
    inputs: list[str] = typer.Argument(
        ...,
        help="Input files, directories or globs (.parquet, .arrow/.feather, .jsonl, .csv); - reads JSONL from stdin "
        "(saved beside the output as OUTPUT.stdin.jsonl, which a resume names instead of -).",
        metavar="INPUT...",
    ),
    output: Path = output_option("Output directory of part-*.parquet files (created).", ...),
    model: Optional[str] = model_option(),
    task: str = task_option("document"),
    dim: Optional[int] = dim_option(),
    any_dim: bool = any_dim_option(),
    text_col: str = typer.Option("text", "--text-column", "--text-col", help="Column holding the text."),
    id_col: Optional[str] = typer.Option(
        None, "--id-column", "--id-col", help="Column holding row ids (default: global row number)."
    ),
    title_col: Optional[str] = typer.Option(
        None, "--title-column", "--title-col", help="Column used as the document prompt's title."
    ),
    keep: Optional[str] = typer.Option(None, "--keep", help="Comma-separated columns copied to the output."),
    long: str = typer.Option("chunk", "--long", help="Texts longer than the limit: chunk, truncate or error."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", help="Sequence limit incl. prompt and specials (default: model context)."
    ),
    chunk_tokens: Optional[int] = typer.Option(
        None, "--chunk-tokens", help="Text tokens per chunk; texts with more are chunked (default: fill --max-tokens)."
    ),
    chunk_overlap: int = typer.Option(
        64,
        "--chunk-overlap",
        help="Tokens shared by neighbouring chunks; more than half a chunk's text is capped to half.",
    ),
    on_bad: str = typer.Option(
        "skip", "--on-bad", help="Null/empty/non-string/invalid UTF-8 rows: skip (listed in _skipped.jsonl) or fail."
    ),
    on_duplicate_id: str = typer.Option(
        "warn",
        "--on-duplicate-id",
        help="Rows whose --id-column value an earlier row used: warn (skip them, listed in _skipped.jsonl), error, or keep.",
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Embedding storage: float32, float16, or int8 (+ per-row float32 scale)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences per forward pass at most."),
    batch_tokens: int = typer.Option(16384, "--batch-tokens", help="Tokens per forward pass at most (rows × longest)."),
    part_rows: int = typer.Option(2000, "--part-rows", help="Input rows per output part file (the unit of resume)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_max_bytes: Optional[str] = cache_max_bytes_option(),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Require an interrupted job in --output and finish it (the same command without it resumes too).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete embedpipe's files in --output and start over."),
    engine: str = typer.Option(
        "local", "--engine", help="local, or ray (Ray Data; RAY_ADDRESS or --ray-address picks the cluster)."
    ),
    ray_actors: Optional[int] = typer.Option(
        None, "--ray-actors", help="Ray: model actors (default: CPUs of the cluster / threads)."
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="Ray: cluster address, e.g. ray://head:10001 (default: RAY_ADDRESS or a local instance).",
    ),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    progress: bool = progress_option(),
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Embed a corpus into a resumable Parquet dataset (one row per text chunk)."""
    from embedpipe.pipeline import IngestConfig
    from embedpipe.pipeline import ingest as run_ingest

    inputs = _stdin_to_file(list(inputs), output, overwrite)

    cfg = IngestConfig(
        inputs=list(inputs),
        output=str(output),
        model=str(model) if model else None,
        backend=backend,
        threads=threads,
        text_col=text_col,
        id_col=id_col,
        title_col=title_col,
        keep=[c.strip() for c in keep.split(",") if c.strip()] if keep else [],
        task=task,
        dim=dim,
        any_dim=any_dim,
        dtype=dtype,
        long=long,
        max_tokens=max_tokens,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        on_bad=on_bad,
        on_duplicate_id=on_duplicate_id,
        batch_rows=batch_size,
        batch_tokens=batch_tokens,
        part_rows=part_rows,
        cache=not no_cache,
        cache_dir=str(cache_dir) if cache_dir else None,
        cache_max_bytes=parse_size(cache_max_bytes, "--cache-max-bytes") if cache_max_bytes else None,
        resume=resume,
        overwrite=overwrite,
        engine=engine,
        ray_actors=ray_actors,
        ray_address=ray_address,
        progress=progress,
    )
    try:
        summary = run_ingest(cfg)
    except KeyboardInterrupt:
        typer.echo(
            f"error: interrupted; finished parts are kept in {output}: run the same command again "
            "(or add --resume) to continue where it stopped",
            err=True,
        )
        raise typer.Exit(130) from None
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.format())


def _stdin_to_file(inputs: list[str], output: Path, overwrite: bool = False) -> list[str]:
    """`-` in INPUT...: stdin copied to OUTPUT.stdin.jsonl (a file ingest can resume from).

    The same bytes piped again reuse the saved file as it is (so the job resumes); different
    bytes never replace the saved input of a job in OUTPUT unless `overwrite` starts it over."""
    if STDIN not in inputs:
        return inputs
    from embedpipe.pipeline.manifest import read_header

    if inputs.count(STDIN) > 1:
        raise typer.BadParameter("- (stdin) can be given once")
    spool = output.with_name(output.name + ".stdin.jsonl")
    if not spool.parent.is_dir():
        raise EmbedpipeError(f"{spool.parent}: no such directory for -o/--output")
    fresh = spool.with_name(f".{spool.name}.{os.getpid()}.tmp")
    try:
        with open(fresh, "wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh)
        if spool.is_file() and filecmp.cmp(fresh, spool, shallow=False):
            typer.echo(f"stdin is the input saved in {spool}: using that file", err=True)
            return [str(spool) if item == STDIN else item for item in inputs]
        if spool.is_file() and read_header(output) is not None and not overwrite:
            raise EmbedpipeError(
                f"stdin differs from {spool.name}, the saved input of the job in {output}: "
                f"pass --overwrite to start over, or resume with {spool.name} in place of -"
            )
        os.replace(fresh, spool)
    finally:
        fresh.unlink(missing_ok=True)
    typer.echo(f"stdin saved to {spool}; to resume, run the same command with {spool} in place of -", err=True)
    return [str(spool) if item == STDIN else item for item in inputs]


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
