"""`embedpipe bench kernels` and `bench tiles`: the JIT matmul kernels alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Optional

import typer

from embedpipe.cli.common import THREADS_OPTION_HELP


def split_values(values: Optional[list[str]]) -> list[str] | None:
    """Accept repeated options and comma lists alike: --type Q8_0,F16 --type Q4_0."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _token_counts(tokens: Optional[list[str]], default: tuple[int, ...]) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in split_values(tokens)) if tokens else default
    except ValueError:
        raise typer.BadParameter("--tokens takes integers, e.g. 16,128,512") from None
    if any(t < 1 for t in counts):
        raise typer.BadParameter(f"--tokens must be >= 1, got {','.join(map(str, counts))}")
    return counts


def _report(as_json: bool) -> Callable[[str], None]:
    return (lambda _line: None) if as_json else typer.echo


def kernels(
    types: Optional[list[str]] = typer.Option(
        None, "--type", help="Weight types (default Q8_0), e.g. Q8_0,Q4_0,F16,BF16,F32,Q4_K,Q6_K."
    ),
    isas: Optional[list[str]] = typer.Option(
        None, "--isa", help="Instruction sets (default: detected; 'all' = every one this CPU runs)."
    ),
    tokens: Optional[list[str]] = typer.Option(None, "--tokens", help="Token counts T (default 16,128,512,2048)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_OPTION_HELP),
    repeats: int = typer.Option(7, "--repeats", min=1, help="Runs per measurement (median)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """JIT matmul kernels on the model's FFN shapes vs numpy fp32 BLAS, with % of int8 peak.

    For integer types, "1-scale %pk" is the same kernel loop with one scale per row, as
    per-channel int8 kernels have: the gap to it is what Q8_0's per-32 block scales cost.
    """
    from embedpipe.codegen.bench import TOKENS, all_runnable_isa_names, run_kernel_bench
    from embedpipe.codegen.quant_formats import FORMATS

    names = [n.upper() for n in (split_values(types) or ["Q8_0"])]
    known = {q.name for q in FORMATS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown type(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    isa_names = split_values(isas)
    if isa_names == ["all"]:
        isa_names = all_runnable_isa_names()
    summary = run_kernel_bench(
        names, isa_names, _token_counts(tokens, TOKENS), threads, repeats, report=_report(as_json)
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))


def tiles(
    candidates: Optional[list[str]] = typer.Option(
        None, "--tiles", help="Register tiles MRxNV[/TC] to compare with the ISA's own, e.g. 3x3,4x2,6x2/60."
    ),
    qtype: str = typer.Option("Q8_0", "--type", help="Integer weight type (Q8_0, Q4_0, Q4_K, ...)."),
    isa: Optional[str] = typer.Option(None, "--isa", help="Instruction set (default: detected)."),
    tokens: Optional[list[str]] = typer.Option(None, "--tokens", help="Token counts T (default 32,256)."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="Threads for the matmul kernels (default 1: one core's loop)."
    ),
    rounds: int = typer.Option(9, "--rounds", min=1, help="Interleaved rounds (median of the per-round ratios)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """The int8 matmul under other register tiles, against the ISA's own, in one process.

    Every tile gets its own compiled library; the tiles take turns in rounds on the model's FFN
    shapes, so a machine that changes speed slows every tile of a round alike. Each tile's
    products must equal the baseline's bit for bit. Ratios >1: faster than the ISA's tile.
    """
    from embedpipe.codegen.tile_bench import TOKENS, parse_tile, run_tile_bench

    parsed = [parse_tile(t) for t in split_values(candidates) or []]
    summary = run_tile_bench(
        parsed, isa, qtype.upper(), _token_counts(tokens, TOKENS), threads, rounds, report=_report(as_json)
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
