"""`embedpipe embed` and `embedpipe tokenize`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from embedpipe.cli.common import BACKEND_OPTION_HELP, MODEL_OPTION_HELP, THREADS_OPTION_HELP, texts_from_args
from embedpipe.runtime.prompts import TASKS


def embed(
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to embed (or use --input)."),
    input_file: Optional[Path] = typer.Option(
        None, "--input", "-i", help='JSONL file, one {"text": ..., "title": ...} per line.'
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write an (n, dim) float32 .npy in input order; default: JSON lines on stdout."
    ),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    task: str = typer.Option("query", "--task", "-t", help=f"Task prompt: {', '.join(TASKS)}."),
    dim: int = typer.Option(768, "--dim", "-d", help="Output dimension (Matryoshka: 768, 512, 256, 128)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per forward pass."),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut inputs longer than the model context instead of failing."
    ),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_OPTION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_OPTION_HELP),
) -> None:
    """Embed texts with the task's prompt; L2-normalized float32 vectors in input order."""
    from embedpipe.runtime.embedder import Embedder

    items, titles = texts_from_args(texts, input_file)
    emb = Embedder.load(model, backend=backend, threads=threads)
    use_titles = titles if any(t is not None for t in titles) else None
    vectors = emb.encode(
        items,
        task=task,
        titles=use_titles,
        dim=dim,
        batch_size=batch_size,
        truncate=truncate,
        show_progress=len(items) > batch_size and sys.stderr.isatty(),
    )
    if output is not None:
        tmp = output.with_name(output.name + ".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(output)
        typer.echo(f"wrote {vectors.shape[0]}×{vectors.shape[1]} float32 to {output}", err=True)
        return
    for vec in vectors:
        sys.stdout.write(json.dumps({"embedding": [round(float(v), 7) for v in vec]}) + "\n")


def tokenize(
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to tokenize (or use --input)."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help='JSONL file, one {"text": ...} per line.'),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_OPTION_HELP),
    task: str = typer.Option(
        "none", "--task", "-t", help="Apply this task's prompt first (default: none, the raw text)."
    ),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut inputs longer than the model context instead of failing."
    ),
) -> None:
    """Print one JSON line {"ids": [...]} per text (BOS/EOS included as the model adds them)."""
    from embedpipe.runtime.text_ids import tokenize_file

    items, titles = texts_from_args(texts, input_file)
    use_titles = titles if any(t is not None for t in titles) else None
    for ids in tokenize_file(model, items, task, use_titles, truncate):
        sys.stdout.write(json.dumps({"ids": ids}) + "\n")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("tokenize")(tokenize)
