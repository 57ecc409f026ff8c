"""Declared parameters of index types: what `build` and `search` accept, with defaults and help.

Each index class lists its `build_params` and `search_params`; `Builder` and
`VectorIndex.search` reject names a type does not declare, and the CLI derives its
`build-index` options from the same declarations.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from embedpipe.indexes.format import PARAMS_SCHEMA
from embedpipe.indexes.quant import SCALE_SCHEMES


@dataclass(frozen=True)
class Param:
    """One knob of an index type."""

    name: str
    type: type
    default: Any
    help: str
    flag: str = ""  # CLI option, default --name-with-dashes
    choices: tuple[Any, ...] = ()
    minimum: int | None = None  # smallest value a number may take ...
    sentinels: tuple[Any, ...] = ()  # ... except these (e.g. -1: "the default")
    maximum: int | None = None  # largest (what the index file can hold: `file_bounds`)

    @property
    def option(self) -> str:
        """The CLI option: ``--name-with-dashes`` (``--x/--no-x`` for a bool) unless `flag`."""
        flag = self.flag or "--" + self.name.replace("_", "-")
        return f"{flag}/--no-{flag[2:]}" if self.type is bool and "/" not in flag else flag

    def check(self, value: Any, kind: str) -> Any:
        kinds = {int: numbers.Integral, float: numbers.Real}.get(self.type, self.type)
        if not isinstance(value, kinds) or (self.type is not bool and isinstance(value, bool)):
            raise ValueError(f"{kind} parameter {self.name} takes a {self.type.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{kind} parameter {self.name} must be one of {self.choices}, got {value!r}")
        if self.minimum is not None and value < self.minimum and value not in self.sentinels:
            allowed = "".join(f" or {s}" for s in self.sentinels)
            raise ValueError(f"{kind} parameter {self.name} must be at least {self.minimum}{allowed}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{kind} parameter {self.name} must be at most {self.maximum}, got {value!r}")
        return value


def file_bounds(kind: str, name: str) -> dict[str, int | None]:
    """``minimum``/``maximum`` of a knob as the index file's header schema bounds it, so a
    build never writes a file its loader would refuse."""
    field = PARAMS_SCHEMA[kind][name]
    return {"minimum": field.lo, "maximum": field.hi}


SCALE_PARAM = Param(
    "scale_mode",
    str,
    "dim",
    "int8/int16 scale: 'dim' (calibrated per dimension, default) or 'vector' (per row).",
    flag="--scale",
    choices=tuple(SCALE_SCHEMES),
)
SEED_PARAM = Param("seed", int, 0, "random seed of the build.")


def check_params(kind: str, declared: Iterable[Param], given: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`given` validated against `declared` (a ValueError names the unknown or bad one)."""
    table = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(table))
    if unknown:
        allowed = ", ".join(table) or "none"
        raise ValueError(f"{kind} indexes have no {what} parameter {', '.join(unknown)} (they take: {allowed})")
    return {name: table[name].check(value, kind) for name, value in given.items()}


def defaults(declared: Iterable[Param]) -> dict[str, Any]:
    return {p.name: p.default for p in declared}
