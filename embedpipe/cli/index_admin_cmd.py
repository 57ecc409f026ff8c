"""`embedpipe index info|delete|compact`: inspect an index, tombstone ids, drop tombstones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import progress_option
from embedpipe.errors import EmbedpipeError

index_app = typer.Typer(help="Inspect and maintain index files.", no_args_is_help=True)


def _read_ids(ids: Optional[str], ids_file: Optional[Path]) -> list[str]:
    if (ids is None) == (ids_file is None):
        raise typer.BadParameter("give --ids A,B,… or --ids-file F (one id per line)")
    if ids is not None:
        wanted, where = [v.strip() for v in ids.split(",") if v.strip()], "--ids"
    else:
        try:
            wanted = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise EmbedpipeError(f"{ids_file}: cannot read ids ({exc.strerror})") from None
        where = str(ids_file)
    if not wanted:
        raise EmbedpipeError(f"{where}: no ids given")
    return wanted


@index_app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="Index file."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    verify: bool = typer.Option(
        False, "--verify", help="Also read the whole file and check its checksums (exit 1 on a mismatch)."
    ),
) -> None:
    """Header, counts, tombstones and build parameters of an index."""
    from embedpipe.indexes.info import format_info, index_info

    info = index_info(path, verify=verify)
    typer.echo(json.dumps(info, sort_keys=True) if as_json else format_info(info))


@index_app.command("delete")
def delete_cmd(
    path: Path = typer.Argument(..., help="Index file (brute or hnsw)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated ids."),
    ids_file: Optional[Path] = typer.Option(None, "--ids-file", help="One id per line."),
    missing_ok: bool = typer.Option(False, "--missing-ok", help="Ignore ids that are not in the index."),
) -> None:
    """Tombstone ids: search never returns them; `index compact` drops them for good."""
    from embedpipe.indexes.tombstones import delete_ids

    added, total = delete_ids(path, _read_ids(ids, ids_file), missing_ok)
    typer.echo(f"{path}: {added} row(s) tombstoned, {total} in total", err=True)


@index_app.command("compact")
def compact_cmd(
    path: Path = typer.Argument(..., help="Index file with tombstones."),
    out: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of replacing PATH."),
    progress: bool = progress_option(),
) -> None:
    """Rebuild the index without its tombstoned rows (same parameters and seed)."""
    from embedpipe.indexes.tombstones import compact

    index, dropped = compact(path, out, progress=progress)
    if dropped == 0 and out is None:
        typer.echo(f"{path}: no tombstones, nothing to compact", err=True)
    else:
        typer.echo(f"{out or path}: {dropped} row(s) dropped, {index.count} left", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
