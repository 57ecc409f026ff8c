"""`embedpipe eval tradeoffs` and `embedpipe eval retrieval`: thin shells over embedpipe.eval."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from embedpipe.cli.common import (
    any_dim_option,
    backend_option,
    cache_dir_option,
    json_option,
    model_help,
    model_option,
    output_option,
    progress_option,
    threads_option,
)

eval_app = typer.Typer(help="Recall/size/latency trade-offs and retrieval quality (BEIR).", no_args_is_help=True)


OUTPUT_HELP = "Also write the rows to this file, by extension: .json, .csv, .md or .png (plot extra); repeatable."


OUTPUT_EXTENSIONS = (".json", ".csv", ".md", ".png")


def _check_outputs(outputs: Optional[list[Path]], *more: Optional[Path]) -> None:
    """Every file the command will write, checked before the sweep (which can take minutes)."""
    from embedpipe.output_files import check_output_file

    for path in outputs or []:
        check_output_file(path, OUTPUT_EXTENSIONS)
    for path in more:
        if path is not None:
            check_output_file(path)


def _emit(rows: list[dict[str, Any]], outputs: Optional[list[Path]], as_json: bool, plot_args: dict[str, Any]) -> None:
    """The rows on stdout (a Markdown table, or JSON with --json) and in each -o file."""
    import json

    from embedpipe.eval import report

    writers = {
        ".json": report.write_json,
        ".csv": report.write_csv,
        ".md": lambda rows, path: Path(path).write_text(report.markdown_table(rows) + "\n"),
        ".png": lambda rows, path: report.write_plot(rows, path, **plot_args),
    }
    typer.echo(json.dumps(rows, indent=1, default=str) if as_json else report.markdown_table(rows))
    for path in outputs or []:
        writers[path.suffix.lower()](rows, path)
        typer.echo(f"wrote {path}", err=True)


@eval_app.command("tradeoffs")
def tradeoffs_cmd(
    emb_dir: Path = typer.Argument(..., help="Embeddings directory written by `embedpipe ingest`."),
    queries: Optional[Path] = typer.Option(
        None,
        "--queries",
        help='Query texts: JSONL (a string, {"query": …} or {"text": …} per line, as search -i reads) or '
        "Parquet (text column). Default: a sample of corpus rows' texts.",
    ),
    n_queries: int = typer.Option(200, "--n-queries", min=1, help="Queries to use (sampled, seeded)."),
    dims: Optional[str] = typer.Option(
        None, "--dims", help="Comma-separated Matryoshka widths of the model (default: all it offers)."
    ),
    any_dim: bool = any_dim_option(),
    quants: Optional[str] = typer.Option(None, "--quants", help="Comma-separated quants (default fp32,int16,int8)."),
    indexes: Optional[str] = typer.Option(
        None, "--indexes", help="Comma-separated index types (default brute,annoy,hnsw)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Query sampling seed."),
    outputs: Optional[list[Path]] = output_option(OUTPUT_HELP + " The plot: recall vs size and vs latency."),
    as_json: bool = json_option("Print the rows as a JSON list instead of a Markdown table."),
    model: Optional[str] = model_option(model_help("the model recorded in the embeddings")),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the embedding cache for the queries."),
    cache_dir: Optional[Path] = cache_dir_option(),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    progress: bool = progress_option(),
    min_recall: Optional[float] = typer.Option(
        None, "--min-recall", help="Recall gate: exit 1 naming every configuration whose recall@10 is below this."
    ),
    at: str = typer.Option(
        "same-dim",
        "--at",
        help="Recall gate reference: same-dim (exact at the row's dim) or full (exact at the model's full "
        "width; 768 is accepted as a synonym).",
    ),
    gate_json: Optional[Path] = typer.Option(None, "--gate-json", help="Recall gate verdicts as JSON."),
    junit: Optional[Path] = typer.Option(
        None, "--junit", help="Recall gate verdicts as JUnit XML (one test case per configuration)."
    ),
) -> None:
    """Recall@10 (vs exact fp32 at full width and vs exact at the same dim), size, build time and
    single-query latency for every dim × quant × index configuration; with --min-recall, a
    CI gate."""
    from embedpipe.eval import embedding as E
    from embedpipe.eval import gate
    from embedpipe.eval import tradeoffs as T

    if min_recall is not None:
        gate.validate(min_recall, at)
    elif gate_json is not None or junit is not None:
        raise typer.BadParameter("--gate-json and --junit report the recall gate; add --min-recall")
    _check_outputs(outputs, gate_json, junit)

    plan = T.Plan(
        dims=T.parse_list(dims, int, ()) or None,
        quants=T.parse_list(quants, str, T.SWEEP_QUANTS),
        indexes=T.parse_list(indexes, str, tuple(T.SWEEPS)),
        any_dim=any_dim,
    )
    data = T.inputs_from_dir(
        emb_dir,
        plan,
        queries,
        n_queries,
        seed,
        model,
        E.CacheOptions(not no_cache, str(cache_dir) if cache_dir else None, progress),
        backend,
        threads,
    )
    typer.echo(data.description, err=True)
    rows = T.run_tradeoffs(data.vectors, data.queries, plan, progress=progress)
    _emit(
        rows,
        outputs,
        as_json,
        dict(
            recall="recall@10",
            panels=[("size_bytes", "index size (bytes)"), ("latency_ms_mean", "mean latency (ms/query)")],
            knobs=T.KNOBS,
            title=f"recall@10 vs exact fp32 at full width — {emb_dir.name}",
        ),
    )
    if min_recall is not None:
        verdicts = gate.report(rows, min_recall, at, gate_json, junit)
        typer.echo(gate.summary(verdicts), err=True)
        if gate.failures(verdicts):
            raise typer.Exit(1)


@eval_app.command("retrieval")
def retrieval_cmd(
    dataset_dir: Path = typer.Argument(..., help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv."),
    dims: Optional[str] = typer.Option(
        None, "--dims", help="Comma-separated Matryoshka widths of the model (default: all it offers)."
    ),
    any_dim: bool = any_dim_option(),
    indexes: Optional[str] = typer.Option(
        None,
        "--indexes",
        help="Comma-separated configurations or types (default brute-fp32,brute-int8,hnsw-int8-m16-ef_search128).",
    ),
    split: str = typer.Option("test", "--split", help="qrels/<split>.tsv to evaluate."),
    max_docs: Optional[int] = typer.Option(
        None, "--max-docs", min=1, help="Subset: judged docs + first corpus docs up to N."
    ),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1, help="Subset: first N judged queries."),
    outputs: Optional[list[Path]] = output_option(OUTPUT_HELP + " The plot: nDCG@10 vs search time."),
    as_json: bool = json_option("Print the rows as a JSON list instead of a Markdown table."),
    model: Optional[str] = model_option(),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    cache_dir: Optional[Path] = cache_dir_option(),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    progress: bool = progress_option(),
) -> None:
    """nDCG@10, Recall@100 and MRR@10 per dim and index configuration on a BEIR dataset."""
    from embedpipe.eval import embedding as E
    from embedpipe.eval import retrieval as R
    from embedpipe.eval.tradeoffs import KNOBS, parse_list
    from embedpipe.runtime.embedder import Embedder

    _check_outputs(outputs)
    configs = R.pick_configs(parse_list(indexes, str, ()) or None)
    data = R.load_beir(dataset_dir, split, max_docs, max_queries)
    emb = Embedder.load(str(model) if model else None, backend=backend, threads=threads)
    typer.echo(f"{dataset_dir}: {len(data.doc_ids)} docs, {len(data.query_ids)} judged queries", err=True)
    if data.unjudgeable:
        typer.echo(
            f"warning: {len(data.unjudgeable)} judged document id(s) are not in corpus.jsonl, e.g. "
            f"{data.unjudgeable[0]!r}: they count as relevant and never retrieved",
            err=True,
        )
    rows = R.run_retrieval(
        data,
        emb,
        parse_list(dims, int, ()) or None,
        configs,
        E.CacheOptions(not no_cache, str(cache_dir) if cache_dir else None, progress),
        progress,
        any_dim=any_dim,
    )
    _emit(
        rows,
        outputs,
        as_json,
        dict(
            recall="ndcg@10",
            panels=[("search_ms_per_query", "search time (ms/query, batched)")],
            knobs=KNOBS,
            title=f"nDCG@10 — {dataset_dir.name}",
        ),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
