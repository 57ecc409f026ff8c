"""`embedpipe embed` and `embedpipe tokenize`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import (
    any_dim_option,
    backend_option,
    dim_option,
    input_option,
    model_option,
    output_option,
    task_option,
    texts_from_args,
    threads_option,
)


def embed(
    texts: Optional[list[str]] = typer.Argument(
        None, help="Texts to embed; a lone - reads one text per stdin line.", metavar="TEXT..."
    ),
    input_file: Optional[str] = input_option(),
    output: Optional[Path] = output_option(
        "Write the vectors to a .npy (float32 matrix), .jsonl (index, text, embedding) or .parquet file; "
        "default: JSON lines on stdout."
    ),
    model: Optional[str] = model_option(),
    task: str = task_option("query"),
    dim: Optional[int] = dim_option(),
    any_dim: bool = any_dim_option(),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per forward pass.", metavar="N"),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut inputs longer than the model context instead of failing."
    ),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Embed texts with the task's prompt; L2-normalized float32 vectors in input order."""
    from embedpipe.runtime.embedder import Embedder

    items, titles = texts_from_args(texts, input_file)
    if output is not None:
        from embedpipe.pipeline.embed_output import WRITERS, check_output_path

        if output.suffix.lower() not in WRITERS:
            raise typer.BadParameter(f"-o/--output must end in {', '.join(WRITERS)}, got {str(output)!r}")
        check_output_path(output, None if input_file in (None, "-") else input_file)
    emb = Embedder.load(model, backend=backend, threads=threads)
    use_titles = titles if any(t is not None for t in titles) else None
    vectors = emb.encode(
        items,
        task=task,
        titles=use_titles,
        dim=dim,
        any_dim=any_dim,
        batch_size=batch_size,
        truncate=truncate,
        show_progress=len(items) > batch_size and sys.stderr.isatty(),
    )
    if output is not None:
        from embedpipe.pipeline.embed_output import write_embeddings

        write_embeddings(output, items, vectors)
        typer.echo(f"wrote {vectors.shape[0]}×{vectors.shape[1]} float32 to {output}", err=True)
        return
    for vec in vectors:
        sys.stdout.write(json.dumps({"embedding": [round(float(v), 7) for v in vec]}) + "\n")


def tokenize(
    texts: Optional[list[str]] = typer.Argument(
        None, help="Texts to tokenize; a lone - reads one text per stdin line.", metavar="TEXT..."
    ),
    input_file: Optional[str] = input_option('JSONL file, one {"text": ...} per line; - reads stdin.'),
    model: Optional[str] = model_option(),
    task: str = task_option("none", "Apply this task's prompt first (default: none, the raw text)."),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut inputs longer than the model context instead of failing."
    ),
) -> None:
    """Print one JSON line {"ids": [...]} per text (BOS/EOS included as the model adds them)."""
    from embedpipe.runtime.text_ids import tokenize_file

    items, titles = texts_from_args(texts, input_file, allow_empty=True)
    use_titles = titles if any(t is not None for t in titles) else None
    for ids in tokenize_file(model, items, task, use_titles, truncate):
        sys.stdout.write(json.dumps({"ids": ids}) + "\n")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("tokenize")(tokenize)
