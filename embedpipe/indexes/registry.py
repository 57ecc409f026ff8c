"""The table of index types, a common Builder, and `load_index` that dispatches on the file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.annoy import SIDECAR_SUFFIX, AnnoyIndex
from embedpipe.indexes.base import (
    IdTable,
    IndexMeta,
    StringTable,
    VectorIndex,
    first_non_finite_row,
    truncate_normalize,
)
from embedpipe.indexes.brute import BruteIndex
from embedpipe.indexes.format import IndexFileError, is_container, read_container
from embedpipe.indexes.hnsw import HnswIndex
from embedpipe.indexes.params import Param

INDEX_TYPES: dict[str, type[VectorIndex]] = {
    "brute": BruteIndex,
    "annoy": AnnoyIndex,
    "hnsw": HnswIndex,
}


def declared_parameters(what: str = "build") -> dict[str, tuple[Param, tuple[str, ...]]]:
    """Every `what` ("build" or "search") parameter any index type declares, with the types
    that take it (a name shared by several types must be declared identically: it is one CLI
    option)."""
    out: dict[str, tuple[Param, tuple[str, ...]]] = {}
    for kind, cls in INDEX_TYPES.items():
        for p in getattr(cls, f"{what}_params"):
            seen, kinds = out.get(p.name, (p, ()))
            if seen != p:
                raise TypeError(f"{what} parameter {p.name!r} is declared differently by {kinds[0]} and {kind}")
            out[p.name] = (p, (*kinds, kind))
    return out


class Builder:
    """Collects vectors (+ ids, kept text columns) and builds one index type.

    ``Builder("hnsw", quant="int8", dim=256, m=16).add(vecs, ids).build()`` — vectors are
    Matryoshka-truncated to `dim` and re-normalized before they reach the index type.

    Memory: by default `add` keeps the caller's array untouched and `build` normalizes a copy.
    ``add(vecs, copy=False)`` hands the array over: `build` then normalizes it in place and the
    index stores it (fp32) or quantizes from it, so no second full-size float copy is made
    (the caller must not use the array afterwards; a read-only, non-float32 or non-contiguous
    array, or a `dim` below its width, still takes a copy). Several `add` calls are joined
    into one new array, and an array `add` had to convert to float32 is new too: those are
    normalized in place either way.
    """

    def __init__(
        self,
        kind: str = "brute",
        quant: str = "fp32",
        dim: int | None = None,
        meta: IndexMeta | None = None,
        **params: Any,
    ) -> None:
        if kind not in INDEX_TYPES:
            raise ValueError(f"unknown index type {kind!r}; choose one of {tuple(INDEX_TYPES)}")
        if quant not in INDEX_TYPES[kind].quants:
            raise ValueError(f"{kind} indexes support quant {INDEX_TYPES[kind].quants}, not {quant!r}")
        INDEX_TYPES[kind].build_settings(params)  # unknown or mistyped parameters fail here
        self.kind, self.quant, self.dim, self.params = kind, quant, dim, params
        self.meta = meta or IndexMeta()
        self._vecs: list[np.ndarray] = []
        self._reusable: list[bool] = []  # per added array: may build normalize it in place
        self._ids: list[Any] = []
        self._cols: dict[str, list[str]] = {}

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[Any] | np.ndarray | None = None,
        columns: dict[str, Sequence[str]] | None = None,
        copy: bool = True,
    ) -> Builder:
        """Add rows (ids default to their positions); ``copy=False`` hands `vectors` over (see
        the class docstring)."""
        given = vectors
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
        start = sum(len(v) for v in self._vecs)
        bad = first_non_finite_row(vectors)
        if bad is not None:  # it would be stored, and score NaN against every query
            raise ValueError(f"vector {start + bad} holds NaN or infinity")
        converted = vectors is not given and vectors.flags.owndata  # new memory: ours already
        self._reusable.append(not copy or converted)
        self._vecs.append(vectors)
        self._ids.extend(range(start, start + len(vectors)) if ids is None else list(ids))
        for name, values in (columns or {}).items():
            self._cols.setdefault(name, []).extend(str(v) for v in values)
        return self

    def build(self, progress: bool = False) -> VectorIndex:
        if not self._vecs:
            raise ValueError("no vectors added")
        joined = len(self._vecs) > 1
        full = np.concatenate(self._vecs) if joined else self._vecs[0]
        dim = self.dim or full.shape[1]
        vecs = truncate_normalize(full, dim, in_place=joined or self._reusable[0])
        if not self.meta.source_dim:
            self.meta.source_dim = full.shape[1]
        ids = IdTable.from_values(
            np.asarray(self._ids)
            if self._ids and all(isinstance(i, (int, np.integer)) for i in self._ids)
            else self._ids,
            len(vecs),
        )
        cols = {k: StringTable.from_strings(v) for k, v in self._cols.items()}
        return INDEX_TYPES[self.kind].build(
            vecs, ids, self.meta, quant=self.quant, columns=cols, progress=progress, **self.params
        )


def build_index(
    vectors: np.ndarray,
    ids: Sequence[Any] | None = None,
    kind: str = "brute",
    quant: str = "fp32",
    dim: int | None = None,
    meta: IndexMeta | None = None,
    **params: Any,
) -> VectorIndex:
    """One-call form of :class:`Builder`."""
    return Builder(kind, quant, dim, meta, **params).add(vectors, ids).build()


def index_kind(path: str | os.PathLike) -> str:
    """The index type stored at `path` (annoy indexes are recognised by their sidecar)."""
    path = Path(path)
    if is_container(path):
        header, _ = read_container(path, verify=False)
        if header.get("type") == AnnoyIndex.kind:  # annoy keeps its header in the sidecar, not the .ann
            tree_file = path.with_name(path.name.removesuffix(SIDECAR_SUFFIX))
            raise IndexFileError(path, f"is the id sidecar of an annoy index; pass the index itself ({tree_file})")
        return header.get("type", "?")
    if AnnoyIndex.sidecar(path).exists():
        return "annoy"
    if not path.exists():
        raise IndexFileError(path, "no such index file")
    if path.is_dir():
        raise IndexFileError(
            path, "is a directory, not an index file (build one from embeddings: `embedpipe build-index`)"
        )
    raise IndexFileError(
        path, f"not an embedpipe index (no magic) and no annoy sidecar {AnnoyIndex.sidecar(path).name} beside it"
    )


def load_index(path: str | os.PathLike, verify: bool = True) -> VectorIndex:
    """Open any index file written by `save` (or a Spotify annoy file with our sidecar)."""
    kind = index_kind(path)
    if kind not in INDEX_TYPES:
        raise IndexFileError(path, f"unknown index type {kind!r}")
    index = INDEX_TYPES[kind].load(path, verify=verify)
    if is_container(path):
        from embedpipe.indexes.tombstones import tombstones_of

        index.deleted = tombstones_of(path, read_container(path, verify=False)[1], index.count)
    return index
