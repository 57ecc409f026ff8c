"""`embedpipe bench ...`: speed measurements printed as same-run medians and ratios.

Each benchmark is one small function calling into its package; add new ones to BENCHMARKS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.bench_kernels_cmd import kernels, split_values, tiles
from embedpipe.cli.common import CANONICAL_FLAGS, MODEL_OPTION_HELP, any_dim_option, threads_option
from embedpipe.errors import EmbedpipeError

bench_app = typer.Typer(help="Benchmarks: same-run medians, ratios to reference implementations.", no_args_is_help=True)


def usage_check(check: Callable[[], object]) -> None:
    """Run a check of the Python API on the parsed flags: its EmbedpipeError is a usage error
    (exit 2) in the flags' own spelling, raised before any work."""
    try:
        check()
    except EmbedpipeError as exc:
        cli_message = getattr(exc, "cli_message", None)
        raise typer.BadParameter(cli_message() if callable(cli_message) else str(exc)) from None


def _positive(value: Optional[float]) -> Optional[float]:
    """Callback of a float option that must be > 0 (click's min= cannot exclude its bound)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"Input should be greater than 0, got {value:g}")
    return value


def startup(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per command (median), after one warm-up run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Wall time, CPU time and peak RSS of `embedpipe --help`, `embed "x"` and `search IDX "q"`
    as fresh processes with warm caches."""
    from embedpipe.runtime.bench_startup import run_startup_bench
    from embedpipe.runtime.registry import resolve_model

    path = str(resolve_model(model))
    report: Callable[[str], None] = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    try:
        summary = run_startup_bench(path, runs, report)
    except RuntimeError as exc:  # a command failed: what it printed says why
        raise EmbedpipeError(f"bench startup: {exc}") from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        m = summary["machine"]
        typer.echo(f"machine: {m['cpu']} ({m['cores']} cores), load {m['load_avg']}; model {path}")


def index(
    n: int = typer.Option(200000, "--n", min=2, help="Vectors to index (queries are held out beyond these)."),
    dim: int = typer.Option(
        768, *CANONICAL_FLAGS["dim"], min=1, help="Dimension (real vectors are Matryoshka-truncated to it)."
    ),
    vectors: Optional[str] = typer.Option(
        None, "--vectors", help="FILE.npy or an ingest output directory; default: SYNTHETIC clustered vectors."
    ),
    queries: int = typer.Option(
        2000,
        "--n-queries",
        min=1,
        help="Held-out query vectors: recall@10 over all, batched QPS over the first 500.",
    ),
    single: int = typer.Option(200, "--single", min=1, help="Queries timed one call at a time."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per measurement (median)."),
    refs: Optional[list[str]] = typer.Option(None, "--ref", help="References (default hnswlib,usearch,faiss,annoy)."),
    m: int = typer.Option(16, "--m", min=2, help="Graph indexes: M for everyone."),
    ef_construction: int = typer.Option(
        200, "--ef-construction", min=1, help="Graph indexes: ef_construction for everyone."
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="Build and batched-search threads for everyone."),
    scaling: Optional[str] = typer.Option(
        None,
        "--scaling",
        help="Also time our HNSW and hnswlib builds at these sizes (e.g. 25000,50000,100000) and fit the exponent.",
    ),
    scaling_only: bool = typer.Option(
        False, "--scaling-only", help="Run only the --scaling (and --update) builds: no QPS/recall rows."
    ),
    scaling_ours_only: bool = typer.Option(
        False, "--scaling-ours-only", help="--scaling times only our HNSW fp32 build (not hnswlib's too)."
    ),
    no_flat: bool = typer.Option(False, "--no-flat", help="Skip our brute/annoy rows."),
    update: bool = typer.Option(
        False, "--update", help="Also time adding 10 % new rows to our HNSW vs a full rebuild (recall of both)."
    ),
    budget_min: Optional[float] = typer.Option(
        None,
        "--budget-min",
        callback=_positive,
        help="Wall budget in minutes (> 0): no build starts after it, a running one is killed.",
    ),
    ours: str = typer.Option("fp32,int8", "--ours", help="Our HNSW element types to build (fp32, int8 or both)."),
    output: Optional[Path] = typer.Option(
        None,
        *CANONICAL_FLAGS["output"],
        "--out",
        help="Rewrite the JSON summary so far to this .json file after each step (--out: an alias).",
        metavar="PATH",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Our HNSW fp32/int8 (+ brute/annoy) vs hnswlib, usearch, FAISS IndexFlatIP/IndexHNSWFlat
    and annoy: build time, peak RSS, size, QPS, recall@10 over ef_search."""
    from embedpipe.indexes.bench import (
        REFERENCES,
        check_index_args,
        check_out,
        check_scaling,
        run_growth_bench,
        run_index_bench,
    )
    from embedpipe.indexes.bench_graph import GraphBench
    from embedpipe.indexes.bench_measure import format_row

    names = tuple(split_values(refs) or REFERENCES)
    our_types = tuple(v for v in ours.split(",") if v)
    report: Callable = (lambda _row: None) if as_json else (lambda row: typer.echo(format_row(row)))
    g = GraphBench(m=m, efc=ef_construction, threads=threads)
    if scaling_only and not (scaling or update):
        raise typer.BadParameter(
            "--scaling-only needs --scaling SIZES (e.g. --scaling 50000,100000,200000) or --update"
        )
    try:
        sizes = tuple(int(v) for v in split_values([scaling]) or ()) if scaling else ()
    except ValueError:
        raise typer.BadParameter("--scaling takes integers, e.g. 25000,50000,100000") from None
    budget_s = None if budget_min is None else 60 * budget_min
    usage_check(lambda: check_index_args(n, dim, queries, single, repeats, names, g, budget_s, our_types))
    usage_check(lambda: check_scaling(sizes))
    out = check_out(output, vectors)  # before any build: a bad path is an error now, not after them
    summary: dict = {"data": "", "n": 0, "queries": 0, "ratios": [], "int8_size": None, "skipped": {}}
    if not scaling_only:
        summary = run_index_bench(
            n,
            dim,
            vectors,
            queries,
            single,
            repeats,
            names,
            report,
            g,
            ours_flat=not no_flat,
            budget_s=budget_s,
            out=out,
            note=lambda s: typer.echo(s, err=True),
            ours=our_types,
        )
    run_growth_bench(
        summary,
        n,
        dim,
        g,
        update,
        sizes,
        ("embedpipe-hnsw-fp32",) if scaling_ours_only else ("embedpipe-hnsw-fp32", "hnswlib"),
        (lambda _s: None) if as_json else typer.echo,
        out,
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if not scaling_only:
        typer.echo(f"data: {summary['data']}; {summary['n']} indexed, {summary['queries']} queries")
    for entry in summary["ratios"]:
        extra = {
            k: entry[k] for k in ("build_time_ratio", "build_cpu_ratio", "peak_rss_ratio", "size_ratio") if k in entry
        }
        typer.echo(f"{entry['comparison']}: single {entry['qps_single']}  batch {entry['qps_batch']}  {extra}")
    if summary["int8_size"]:
        typer.echo(f"int8 HNSW file size: {summary['int8_size']}")
    for name, why in summary["skipped"].items():
        typer.echo(f"skipped {name}: {why}")
    if "update" in summary:
        typer.echo(f"update: {summary['update']}")
    for impl, fit in summary.get("scaling", {}).items():
        typer.echo(
            f"build time {impl}: {fit['build_s']} s wall, {fit['cpu_s']} s CPU at "
            f"n={fit['sizes']}; fitted exponent {fit['exponent']} (wall), "
            f"{fit['exponent_cpu']} (CPU); n log n over these sizes: {fit['exponent_n_log_n']}"
        )


def ingest(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    input_path: Optional[str] = typer.Option(
        None, "--input", "-i", help="Parquet file with a text column (default: synthetic texts)."
    ),
    n: int = typer.Option(300, "--n", min=1, help="Texts to embed."),
    task: str = typer.Option("document", "--task", "-t", help="Task prompt."),
    dim: Optional[int] = typer.Option(None, "--dim", "-d", help="Output dimension (default: model width)."),
    any_dim: bool = any_dim_option(),
    backend: str = typer.Option("auto", "--backend", help="Matmul backend: auto, jit or numpy."),
    threads: Optional[int] = threads_option(),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per measurement (median)."),
    rss_rows: int = typer.Option(
        0, "--rss-rows", min=0, help="Also measure peak RSS of ingest on N and 10×N rows (0: skip)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Ingest pipeline overhead vs Embedder.encode on the same texts, cache speedup, RSS vs corpus size."""
    from embedpipe.pipeline.bench import run_ingest_bench, run_rss_bench

    report: Callable[[str], None] = (lambda _line: None) if as_json else typer.echo
    summary = run_ingest_bench(model, input_path, n, task, dim, backend, threads, repeats, report, any_dim=any_dim)
    if rss_rows:
        summary["rss"] = run_rss_bench(
            model or summary["model"],
            rss_rows,
            10,
            report,
            backend=backend,
            threads=threads,
            part_rows=2000,
            sort_window=512,
        )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))


def runtime(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    threads: Optional[list[str]] = typer.Option(
        None, "--threads", help="Thread counts, e.g. 1,2 (default: 1 and all cores)."
    ),
    peers: Optional[list[str]] = typer.Option(
        None, "--peer", help="Peers (default jit,numpy,llama.cpp,sentence-transformers)."
    ),
    kinds: Optional[list[str]] = typer.Option(None, "--kind", help="Document kinds (default short,long,xlong)."),
    singles: int = typer.Option(
        10,
        "--singles",
        min=1,
        help="Single-text calls per peer and kind (median), spread evenly over the rounds (at least one a round).",
    ),
    rounds: Optional[int] = typer.Option(
        None,
        "--rounds",
        min=1,
        help="Interleaved rounds per kind (default: --repeats, 3). Every peer is loaded once at each thread count, "
        "in a process of its own; a round is: each of them in turn encodes the kind's batch once, then each in "
        "turn encodes the round's share of the --singles texts (the same texts for all). Ratios and 1 -> N thread "
        "speed-ups are given of the medians and as the median of the per-round ratios, robust to the machine "
        "changing speed during the run.",
    ),
    repeats: int = typer.Option(
        3, "--repeats", min=1, help="Rounds when --rounds is not given; runs of the FFN probe and --profile-ops."
    ),
    batch_texts: Optional[int] = typer.Option(
        None, "--batch-texts", min=1, help="Texts per batch for every kind (default 96; 16 for xlong)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass (every peer)."),
    st_python: Optional[str] = typer.Option(
        None, "--st-python", help="Python with torch + sentence-transformers (or $EMBEDPIPE_ST_PYTHON)."
    ),
    st_model: Optional[str] = typer.Option(
        None, "--st-model", help="sentence-transformers checkout (default: the one cached beside the GGUF)."
    ),
    onnx_dir: Optional[str] = typer.Option(
        None,
        "--onnx-dir",
        help="ONNX exports for the onnxruntime peers (default: onnx/ beside the GGUF; scripts/export_onnx.py).",
    ),
    profile_ops: bool = typer.Option(
        False, "--profile-ops", help="Also report the JIT peer's CPU time per operation of each kind's batches."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Embedding speed end to end: embedpipe JIT and numpy vs llama.cpp, ONNX Runtime and
    sentence-transformers, measured in interleaved rounds (see --rounds).

    RSS MB is the peak resident set (VmHWM) of the peer's own worker process after all its
    rounds, load MB the same right after it loaded the model: the peer alone (interpreter,
    libraries, weights, activations), not the benchmark's other peers."""
    from embedpipe.codegen.threads import default_threads
    from embedpipe.runtime.bench import KINDS, PEERS, BenchConfig, default_st_model, run_runtime_bench
    from embedpipe.runtime.bench_peers import check_peer_names
    from embedpipe.runtime.bench_report import format_summary
    from embedpipe.runtime.registry import resolve_model

    try:
        thread_list = [int(t) for t in split_values(threads)] if threads else sorted({1, default_threads()})
    except ValueError:
        raise typer.BadParameter("--threads takes integers, e.g. 1,2") from None
    if any(t < 1 for t in thread_list):
        raise typer.BadParameter("--threads must be >= 1")
    kind_list = tuple(split_values(kinds) or KINDS)
    bad = [k for k in kind_list if k not in KINDS]
    if bad:
        raise typer.BadParameter(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    peer_list = tuple(split_values(peers) or PEERS)
    usage_check(lambda: check_peer_names(peer_list))
    model = str(resolve_model(model))  # after the flags: it may pull the model
    cfg = BenchConfig(
        model=model,
        threads=thread_list,
        peers=peer_list,
        kinds=kind_list,
        singles=singles,
        repeats=repeats,
        rounds=rounds or repeats,
        batch_size=batch_size,
        st_python=st_python,
        st_model=st_model or default_st_model(model),
        onnx_dir=onnx_dir,
        profile_ops=profile_ops,
    )
    if batch_texts:
        cfg.batch_texts = {k: batch_texts for k in KINDS}
    # With --json, progress goes to stderr so stdout stays one JSON document.
    report: Callable[[str], None] = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    summary = run_runtime_bench(cfg, report)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for line in format_summary(summary):
        typer.echo(line)


def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    threads: Optional[int] = threads_option(),
    concurrency: Optional[list[str]] = typer.Option(None, "--concurrency", help="Concurrent clients (default 1,8,32)."),
    kinds: Optional[list[str]] = typer.Option(None, "--kind", help="Text kinds (default short,long)."),
    peers: Optional[list[str]] = typer.Option(None, "--peer", help="Servers (default embedpipe,llama.cpp)."),
    requests: int = typer.Option(
        256, "--requests", min=1, help="Requests per (server, kind, concurrency), one text each."
    ),
    max_seconds: float = typer.Option(
        120.0, "--max-seconds", callback=_positive, help="Time cap per (server, kind, concurrency), > 0."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """HTTP /v1/embeddings under concurrent load: embedpipe serve vs llama-cpp-python's server vs in-process encode."""
    from embedpipe.codegen.threads import default_threads
    from embedpipe.runtime.registry import resolve_model
    from embedpipe.serve.bench import (
        CONCURRENCY,
        KINDS,
        PEERS,
        ServeBenchConfig,
        check_serve_config,
        format_summary,
        run_serve_bench,
    )

    try:
        conc = tuple(int(c) for c in split_values(concurrency)) if concurrency else CONCURRENCY
    except ValueError:
        raise typer.BadParameter("--concurrency takes integers, e.g. 1,8,32") from None
    kind_list = tuple(split_values(kinds) or KINDS)
    cfg = ServeBenchConfig(
        model="",  # resolved below, once the flags are known to be right: it may pull the model
        threads=threads or default_threads(),
        kinds=kind_list,
        concurrency=conc,
        peers=tuple(split_values(peers) or PEERS),
        requests=requests,
        max_seconds=max_seconds,
    )
    usage_check(lambda: check_serve_config(cfg))
    cfg.model = str(resolve_model(model))
    report: Callable[[str], None] = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    summary = run_serve_bench(cfg, report)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for line in format_summary(summary):
        typer.echo(line)


BENCHMARKS: dict[str, Callable[..., None]] = {
    "startup": startup,
    "kernels": kernels,
    "tiles": tiles,
    "index": index,
    "ingest": ingest,
    "runtime": runtime,
    "serve": serve,
}


def register(app: typer.Typer) -> None:
    for name, fn in BENCHMARKS.items():
        bench_app.command(name)(fn)
    app.add_typer(bench_app, name="bench")
