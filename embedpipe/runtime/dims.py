"""The one check of an output dimension against the widths a model offers (Matryoshka dims).

A model is trained to give meaningful vectors at its Matryoshka widths only; any other prefix
length is allowed with `any_dim` (CLI `--any-dim`) for experiments.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedpipe.errors import EmbedpipeError


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
        return self.render("--" + self.name.replace("_", "-"), "--any-dim")


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
