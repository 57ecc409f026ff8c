"""`embedpipe build-index` and `embedpipe search`: thin wrappers over embedpipe.indexes."""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from embedpipe.cli.common import (
    any_dim_option,
    backend_option,
    dim_option,
    input_option,
    json_option,
    k_option,
    model_help,
    model_option,
    output_option,
    progress_option,
    threads_option,
)
from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.registry import INDEX_TYPES, declared_parameters
from embedpipe.jsonl import STDIN, iter_queries

TYPE_HELP = "Index type: brute (exact), annoy (Spotify-compatible .ann + PATH.ids), hnsw."
QUANT_HELP = (
    "Vector storage: " + "; ".join(f"{kind}: {'/'.join(cls.quants)}" for kind, cls in INDEX_TYPES.items()) + "."
)


def _read_queries(texts: list[str] | None, input_file: str | None) -> list[str]:
    """QUERY arguments (a lone `-`: one per stdin line), or -i/--input JSONL (`-`: stdin) lines:
    {"query": …} / {"text": …} / a JSON string."""
    from embedpipe.cli.common import refuse_empty, stdin_lines

    if texts and input_file is not None:
        raise typer.BadParameter("give QUERY arguments or -i/--input, not both")
    if input_file is None:
        if not texts:
            raise typer.BadParameter("give QUERY arguments, - (one per stdin line) or -i/--input F.jsonl")
        out = stdin_lines() if texts == [STDIN] else list(texts)
        refuse_empty(out, lambda i: f"QUERY argument {i + 1}")
        where = "stdin"
    else:
        where = "stdin" if input_file == STDIN else input_file
        out = [text for _, text in iter_queries(input_file)]
    if not out:
        raise EmbedpipeError(f"{where}: no queries in it; give one query per line")
    return out


#: What a build fixes and an update keeps (parameter -> flag), beside the index types' own parameters.
_FIXED_AT_BUILD = {
    "kind": "--type",
    "quant": "--quant",
    "dim": "--dim",
    "any_dim": "--any-dim",
    "no_text": "--no-text",
    "id_column": "--id-column",
    "embedding_column": "--embedding-column",
    "normalize": "--normalize",
}


def _build(
    ctx: typer.Context,
    emb_dir: Path = typer.Argument(
        ...,
        help="Embeddings directory written by `embedpipe ingest`, or a .npy / .parquet / Arrow file of other tools' embeddings.",
    ),
    output: Optional[Path] = output_option("Index file to write."),
    update: Optional[Path] = typer.Option(
        None,
        "--update",
        help="Add the rows of ingest parts this index does not hold yet (brute, hnsw); rewrites it atomically.",
    ),
    kind: str = typer.Option("brute", "--type", help=TYPE_HELP),
    quant: str = typer.Option("fp32", "--quant", help=QUANT_HELP),
    dim: Optional[int] = dim_option("Matryoshka dimension (truncate + re-normalize); default: full."),
    any_dim: bool = any_dim_option(),
    no_text: bool = typer.Option(False, "--no-text", help="Do not copy kept text columns into the index."),
    id_column: Optional[str] = typer.Option(
        None,
        "--id-column",
        help="Foreign Parquet/Arrow: id column, which must exist; default: 'id' if the file has it, else row numbers.",
    ),
    embedding_column: str = typer.Option(
        "embedding", "--embedding-column", help="Foreign Parquet/Arrow: embedding column."
    ),
    normalize: bool = typer.Option(
        False, "--normalize", help="Foreign embeddings: L2-normalize rows (otherwise they must be unit length)."
    ),
    progress: bool = progress_option(),
    **params: Any,
) -> None:
    """Build an index from ingest output or foreign embeddings, or --update one."""
    from embedpipe.indexes.query import build_from_dir

    out = output
    if (out is None) == (update is None):
        raise typer.BadParameter("give -o/--output for a new index or --update PATH for an existing one")
    start = time.perf_counter()
    if update is not None:
        from embedpipe.indexes.update import update_from_dir

        given = [p.option.split("/")[0] for p, _ in declared_parameters("build").values() if params[p.name] is not None]
        given += [
            flag
            for name, flag in _FIXED_AT_BUILD.items()
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"  # typer may vendor click
        ]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: --update keeps the index's own build parameters")
        index, added = update_from_dir(emb_dir, update, progress=progress)
        typer.echo(
            f"{update}: {added} rows added, {index.count} vectors, updated in {time.perf_counter() - start:.1f} s",
            err=True,
        )
        return
    if kind not in INDEX_TYPES:
        raise typer.BadParameter(f"--type must be one of {', '.join(INDEX_TYPES)}")
    declared = {p.name: p for p in INDEX_TYPES[kind].build_params}
    for name, (p, kinds) in declared_parameters("build").items():
        if params[name] is not None and name not in declared:
            raise typer.BadParameter(f"{p.option.split('/')[0]} applies to {', '.join(kinds)} indexes, not {kind}")
    chosen = {name: p.default if params[name] is None else params[name] for name, p in declared.items()}
    try:
        index = build_from_dir(
            emb_dir,
            out,
            kind,
            quant,
            dim,
            keep_text=not no_text,
            progress=progress,
            id_column=id_column,
            embedding_column=embedding_column,
            normalize=normalize,
            any_dim=any_dim,
            **chosen,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        f"{out}: {kind} {index.quant} dim {index.dim}, {index.count} vectors, "
        f"{index.saved_bytes(out) / 1e6:.1f} MB, built in {time.perf_counter() - start:.1f} s",
        err=True,
    )


def _with_parameter_options(fn: Callable[..., None], what: str) -> Callable[..., None]:
    """`fn` with one option per declared `what` ("build"/"search") parameter of the index types,
    passed in its `**params`. Every such option defaults to None (= not given): the command
    rejects one that does not apply to the index type, and fills the type's declared default
    (build) or the value stored in the index (search) for the others."""
    fixed = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    extra = [
        inspect.Parameter(
            p.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[p.type],
            default=typer.Option(
                None,
                p.option,
                help=f"{', '.join(kinds)}: {p.help}" + (f" [default: {p.default}]" if what == "build" else ""),
                metavar=p.type.__name__.upper() if p.type is not bool else None,
            ),
        )
        for p, kinds in declared_parameters(what).values()
    ]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        fn(**kwargs)

    command.__signature__ = inspect.Signature(fixed + extra)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in fixed + extra}
    return command


build_index_cmd = _with_parameter_options(_build, "build")


def _search(
    index_path: Path = typer.Argument(..., help="Index file from `build-index`.", metavar="INDEX"),
    queries: Optional[list[str]] = typer.Argument(
        None, help="Query texts; a lone - reads one query per stdin line.", metavar="QUERY..."
    ),
    input_file: Optional[str] = input_option(
        'JSONL of queries ({"query": …}, {"text": …} or a string); - reads stdin.'
    ),
    k: int = k_option(),
    as_json: bool = json_option("Print one JSON line per query."),
    model: Optional[str] = model_option(model_help("the one recorded in the index")),
    allow_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch", help="Search even if the model's SHA-256 differs from the index's."
    ),
    vector: Optional[str] = typer.Option(None, "--vector", help="One query vector: comma-separated floats."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Query vectors: a 2-D .npy file."),
    per_chunk: bool = typer.Option(
        False, "--per-chunk", help="List every matching chunk (default: one hit per document, its best chunk)."
    ),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    **knobs: Any,
) -> None:
    """Nearest documents for text queries (embedded with the index's model and query prompt) or
    for query vectors (--vector / --vectors). Kept text columns are shown with each hit."""
    from embedpipe.indexes.searcher import Index

    if vector is not None or vectors is not None:
        if queries or input_file is not None:
            raise typer.BadParameter("give text queries or --vector/--vectors, not both")
        from embedpipe.indexes.query import vector_queries

        q = vector_queries(vector, vectors)
        index = Index(index_path, threads=threads)
        _check_knobs(index, knobs)
        labels: list[Any] = list(range(len(q)))
        hits = index.search_vectors(q, k, per_chunk, **knobs)
    else:
        texts = _read_queries(queries, input_file)
        index = Index(index_path, model, allow_mismatch, backend, threads)
        _check_knobs(index, knobs)
        labels = list(texts)
        hits = index.search_batch(texts, k, per_chunk, **knobs)
    for label, results in zip(labels, hits):
        if as_json:
            typer.echo(json.dumps({"query": label, "results": results}, ensure_ascii=False))
            continue
        typer.echo(f"query: {label}")
        for rank, hit in enumerate(results, 1):
            typer.echo(f"{rank:3d}. {hit['score']:.4f}  {hit['id']}" + _extra(hit))


def _check_knobs(index: Any, knobs: dict[str, Any]) -> None:
    """A search option the index type does not take is a usage error (exit 2), found before
    the model is loaded."""
    from embedpipe.indexes.searcher import KnobError

    try:
        index.check_knobs(knobs)
    except KnobError as exc:
        raise typer.BadParameter(exc.cli_message()) from None


def _extra(hit: dict[str, Any]) -> str:
    """Kept columns after the id: `text` last (it is the long one), one line."""
    shown = [(c, v) for c, v in hit.items() if c not in ("id", "score", "text", "chunk_tokens")]
    if "text" in hit:
        shown.append(("text", hit["text"]))
    parts = [f"{c}={' '.join(str(v).split())}" for c, v in shown if v not in ("", None)]
    return ("  " + "  ".join(parts)) if parts else ""


search_cmd = _with_parameter_options(_search, "search")


def register(app: typer.Typer) -> None:
    app.command("build-index")(build_index_cmd)
    app.command("search")(search_cmd)
