"""Token ids of prompted texts, checked against the model's context.

The one implementation behind `Embedder.tokenize` and `embedpipe tokenize`; `tokenize_file`
reads only the tokenizer and the context length from the GGUF, not the weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from embedpipe.errors import EmbedpipeError, InputTooLongError
from embedpipe.runtime import prompts


def text_list(texts: Iterable[str], caller: str) -> list[str]:
    """`texts` (any iterable, read once) as a list; a lone string or bytes, or something that
    is not iterable, is an error naming `caller`."""
    if isinstance(texts, (str, bytes)):
        raise EmbedpipeError(f"{caller} takes a list of texts, not a single string")
    if not isinstance(texts, Iterable):
        raise EmbedpipeError(f"{caller} takes a list of texts, got {type(texts).__name__}")
    return list(texts)


def check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise EmbedpipeError("pass a list of texts, not a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EmbedpipeError(f"text {i} is {type(text).__name__}, not str")


def fit_context(ids: list[list[int]], max_tokens: int, truncate: bool, add_eos: bool) -> list[list[int]]:
    """`ids` with every sequence within `max_tokens`: cut (keeping EOS) when `truncate`, else an
    InputTooLongError naming the first text that does not fit."""
    for i, seq in enumerate(ids):
        if len(seq) > max_tokens:
            if not truncate:
                raise InputTooLongError(
                    f"text {i} has {len(seq)} tokens, more than the model's context of {max_tokens}; "
                    "pass truncate=True (CLI: --truncate) to cut it"
                )
            tail = seq[-1:] if add_eos else []
            ids[i] = seq[: max_tokens - len(tail)] + tail
    return ids


def tokenize_file(
    model: str | os.PathLike | None,
    texts: Sequence[str],
    task: str = "none",
    titles: Sequence[str | None] | None = None,
    truncate: bool = False,
) -> list[list[int]]:
    """Token ids (BOS/EOS as the model adds them) of the prompted `texts` for `model` (a GGUF
    path or registered name; default: the default model), exactly as `Embedder.tokenize`
    returns them."""
    from embedpipe.runtime.embedder import max_tokens_of, prompt_convention
    from embedpipe.runtime.gguf_file import GGUFModelFile
    from embedpipe.runtime.registry import resolve_model
    from embedpipe.runtime.tokenizer import load_tokenizer

    check_texts(texts)
    model_file = GGUFModelFile(resolve_model(model))
    tok = load_tokenizer(model_file)
    ids = tok.encode_batch(prompts.format_texts(texts, task, titles, prompt_convention(model_file)))
    return fit_context(ids, max_tokens_of(model_file), truncate, tok.special.add_eos)
