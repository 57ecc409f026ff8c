"""Small helpers shared by CLI commands: input reading and options that recur."""

from __future__ import annotations

from pathlib import Path

import typer

from embedpipe.errors import EmbedpipeError
from embedpipe.jsonl import iter_jsonl

MODEL_OPTION_HELP = (
    "GGUF model file or registered model name, e.g. all-minilm-l6-v2 or all-minilm-l6-v2:f32 "
    "(`embedpipe model list`; default: EmbeddingGemma Q8_0, pulled on first use)."
)
BACKEND_OPTION_HELP = "Matmul backend: auto (JIT kernels when available), jit, or numpy (reference)."
THREADS_OPTION_HELP = "Threads for the matmul kernels (default: the cores this process may use; env EMBEDPIPE_THREADS)."


def read_jsonl_texts(path: Path) -> tuple[list[str], list[str | None]]:
    """Texts and optional titles from a JSONL file of {"text": ..., "title": ...} objects."""
    texts: list[str] = []
    titles: list[str | None] = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise EmbedpipeError(f'{path}:{lineno}: expected an object with a string "text" field')
        title = row.get("title")
        if title is not None and not isinstance(title, str):
            raise EmbedpipeError(f'{path}:{lineno}: "title" must be a string')
        texts.append(row["text"])
        titles.append(title)
    return texts, titles


def texts_from_args(texts: list[str] | None, input_file: Path | None) -> tuple[list[str], list[str | None]]:
    if input_file is not None and texts:
        raise typer.BadParameter("give TEXT arguments or --input, not both")
    if input_file is not None:
        return read_jsonl_texts(input_file)
    if not texts:
        raise typer.BadParameter("give TEXT arguments or --input F.jsonl")
    return list(texts), [None] * len(texts)
