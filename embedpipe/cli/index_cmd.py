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

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.registry import INDEX_TYPES, declared_parameters
from embedpipe.jsonl import iter_jsonl

TYPE_HELP = "Index type: brute (exact), annoy (Spotify-compatible .ann + PATH.ids), hnsw."
QUANT_HELP = (
    "Vector storage: " + "; ".join(f"{kind}: {'/'.join(cls.quants)}" for kind, cls in INDEX_TYPES.items()) + "."
)


def _read_queries(texts: list[str] | None, input_file: Path | None) -> list[str]:
    """QUERY arguments, or --input JSONL lines: {"query": …} / {"text": …} / a JSON string."""
    if texts and input_file is not None:
        raise typer.BadParameter("give QUERY arguments or --input, not both")
    if input_file is None:
        if not texts:
            raise typer.BadParameter("give QUERY arguments or --input F.jsonl")
        return list(texts)
    out: list[str] = []
    for lineno, row in iter_jsonl(input_file):
        text = row if isinstance(row, str) else (row.get("query", row.get("text")) if isinstance(row, dict) else None)
        if not isinstance(text, str):
            raise EmbedpipeError(
                f'{input_file}:{lineno}: expected a string or an object with a string "query" or "text" field'
            )
        out.append(text)
    return out


def _build(
    emb_dir: Path = typer.Argument(
        ...,
        help="Embeddings directory written by `embedpipe ingest`, or a .npy / .parquet / Arrow file of other tools' embeddings.",
    ),
    out: Optional[Path] = typer.Option(None, "-o", "--output", help="Index file to write."),
    update: Optional[Path] = typer.Option(
        None,
        "--update",
        help="Add the rows of ingest parts this index does not hold yet (brute, hnsw); rewrites it atomically.",
    ),
    kind: str = typer.Option("brute", "--type", help=TYPE_HELP),
    quant: str = typer.Option("fp32", "--quant", help=QUANT_HELP),
    dim: Optional[int] = typer.Option(
        None, "--dim", help="Matryoshka dimension (truncate + re-normalize); default: full."
    ),
    no_text: bool = typer.Option(False, "--no-text", help="Do not copy kept text columns into the index."),
    id_column: str = typer.Option(
        "id", "--id-column", help="Foreign Parquet/Arrow: id column (row numbers if absent)."
    ),
    embedding_column: str = typer.Option(
        "embedding", "--embedding-column", help="Foreign Parquet/Arrow: embedding column."
    ),
    normalize: bool = typer.Option(
        False, "--normalize", help="Foreign embeddings: L2-normalize rows (otherwise they must be unit length)."
    ),
    **params: Any,
) -> None:
    """Build an index from ingest output or foreign embeddings, or --update one."""
    from embedpipe.indexes.query import build_from_dir

    if (out is None) == (update is None):
        raise typer.BadParameter("give -o/--output for a new index or --update PATH for an existing one")
    start = time.perf_counter()
    if update is not None:
        from embedpipe.indexes.update import update_from_dir

        index, added = update_from_dir(emb_dir, update, progress=True)
        typer.echo(
            f"{update}: {added} rows added, {index.count} vectors, updated in {time.perf_counter() - start:.1f} s",
            err=True,
        )
        return
    if kind not in INDEX_TYPES:
        raise typer.BadParameter(f"--type must be one of {', '.join(INDEX_TYPES)}")
    chosen = {p.name: params[p.name] for p in INDEX_TYPES[kind].build_params}
    try:
        index = build_from_dir(
            emb_dir,
            out,
            kind,
            quant,
            dim,
            keep_text=not no_text,
            progress=True,
            id_column=id_column,
            embedding_column=embedding_column,
            normalize=normalize,
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
    passed in its `**params`: an option applies to the types named in its help and is ignored for
    the others. Search options default to None: the value stored in the index."""
    fixed = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    extra = [
        inspect.Parameter(
            p.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=p.type if what == "build" else Optional[p.type],
            default=typer.Option(
                p.default if what == "build" else None, p.option, help=f"{', '.join(kinds)}: {p.help}"
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
    index_path: Path = typer.Argument(..., help="Index file from `build-index`."),
    queries: Optional[list[str]] = typer.Argument(None, help="Query texts."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="JSONL of queries."),
    k: int = typer.Option(10, "-k", min=1, help="Results per query."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per query."),
    model: Optional[Path] = typer.Option(None, "--model", help="GGUF model (default: the one recorded in the index)."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch", help="Search even if the model's SHA-256 differs from the index's."
    ),
    vector: Optional[str] = typer.Option(None, "--vector", help="One query vector: comma-separated floats."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Query vectors: a 2-D .npy file."),
    **knobs: Any,
) -> None:
    """Nearest ids for text queries (embedded with the index's model and query prompt) or for
    query vectors (--vector / --vectors)."""
    from embedpipe.indexes import load_index
    from embedpipe.indexes.query import search_texts, search_vectors, text_embedder, vector_queries

    index = load_index(index_path)
    chosen = {p.name: knobs[p.name] for p in index.search_params if knobs[p.name] is not None}
    if vector is not None or vectors is not None:
        if queries or input_file is not None:
            raise typer.BadParameter("give text queries or --vector/--vectors, not both")
        rows = search_vectors(index, vector_queries(vector, vectors), k, **chosen)
    else:
        texts = _read_queries(queries, input_file)
        rows = search_texts(index, text_embedder(index, model, allow_mismatch), texts, k, **chosen)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False))
            continue
        typer.echo(f"query: {row['query']}")
        for rank, hit in enumerate(row["results"], 1):
            extra = "  ".join(f"{c}={v}" for c, v in hit.items() if c not in ("id", "score"))
            typer.echo(f"{rank:3d}. {hit['score']:.4f}  {hit['id']}" + (f"  {extra}" if extra else ""))


search_cmd = _with_parameter_options(_search, "search")


def register(app: typer.Typer) -> None:
    app.command("build-index")(build_index_cmd)
    app.command("search")(search_cmd)
