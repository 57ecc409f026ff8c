"""The one check of an output dimension against the widths a model offers (Matryoshka dims).

A model is trained to give meaningful vectors at its Matryoshka widths only; any other prefix
length is allowed with `any_dim` (CLI `--any-dim`) for experiments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedpipe.errors import EmbedpipeError, cli_flag


class DimError(EmbedpipeError):
    """A dim the model does not offer. `str()` names the Python arguments, `cli_message()` the flags."""

    def __init__(self, dim: int, dims: Sequence[int], name: str = "dim") -> None:
        self.dim, self.dims, self.name = dim, tuple(int(d) for d in dims), name
        super().__init__(self.render(name, "any_dim=True"))

    def render(self, name: str, any_flag: str) -> str:
        choices = ", ".join(map(str, self.dims))
        full = max(self.dims)
        message = f"{name} {self.dim} is not offered by this model: choose one of {choices}"
        if 0 < self.dim <= full:
            message += f", or pass {any_flag} for any width in 1..{full}"
        return message

    def cli_message(self) -> str:
        return self.render(cli_flag(self.name), cli_flag("any_dim"))


def check_dim(dim: int | None, dims: Sequence[int], any_dim: bool = False, name: str = "dim") -> int:
    """`dim` (None: the model's full width) if the model offers it, else `DimError` naming the
    argument `name` (the CLI flag `--name`)."""
    full = max(dims)
    if dim is None:
        return full
    dim = int(dim)
    if dim in dims or (any_dim and 0 < dim <= full):
        return dim
    raise DimError(dim, dims, name)


def matryoshka_dims(model_file: Any) -> tuple[int, ...]:
    """The widths an opened GGUF model offers, from its metadata alone (no weights loaded): the
    recorded `embedpipe.matryoshka_dims`, else EmbeddingGemma's widths that fit its hidden size,
    else its hidden size. What the model classes' ``dims`` return (tested to agree)."""
    from embedpipe.runtime.bert_names import KEY_DIMS
    from embedpipe.runtime.gemma_config import ARCH as GEMMA_ARCH
    from embedpipe.runtime.gemma_config import MATRYOSHKA_DIMS

    arch = model_file.architecture
    hidden = int(model_file.require(f"{arch}.embedding_length"))
    recorded = model_file.get(KEY_DIMS)
    if recorded is not None:
        return tuple(int(d) for d in recorded)
    if arch == GEMMA_ARCH:
        return tuple(d for d in MATRYOSHKA_DIMS if d <= hidden) or (hidden,)
    return (hidden,)


def recorded_model_dims(model_path: str | os.PathLike | None, width: int) -> tuple[int, ...]:
    """The widths up to ``width`` that the model recorded at ``model_path`` offers; just
    ``(width,)`` when no model is recorded or its file is gone (foreign embeddings, a dataset
    moved to another machine): then only the full width is known to be meaningful. The full
    width is always offered (it truncates nothing)."""
    if model_path and Path(model_path).is_file():
        from embedpipe.runtime.gguf_file import GGUFModelFile

        try:
            offered = matryoshka_dims(GGUFModelFile(model_path))
        except EmbedpipeError:
            offered = ()
        return offered_dims(offered, width)
    return (width,)


def offered_dims(model_dims: Sequence[int], width: int) -> tuple[int, ...]:
    """The model's widths that fit vectors of ``width``, and ``width`` itself, widest first."""
    return tuple(sorted({int(width), *(int(d) for d in model_dims if d <= width)}, reverse=True))
