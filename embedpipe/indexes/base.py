"""What every index type shares: id tables, query preparation, the search API, metadata.

Scores are inner products of L2-normalized vectors (cosine similarity); higher is better.
Matryoshka: an index built at `dim` < the embeddings' width stores vectors truncated to `dim`
and re-normalized; queries of the original width are truncated and re-normalized the same way,
queries of any other width raise DimensionMismatchError.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from embedpipe.codegen.topk import topk
from embedpipe.errors import shape_text
from embedpipe.indexes.format import DimensionMismatchError, IndexFileError
from embedpipe.indexes.params import Param, check_params, defaults
from embedpipe.indexes.validate import check_results

if TYPE_CHECKING:
    from embedpipe.pipeline.dataset import Embeddings

METRIC = "ip"


NORM_BLOCK = 16384  # rows per block of normalize_rows


def normalize_rows(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """float32 `x` with unit-length rows (all-zero rows stay zero): a copy, or with `in_place`
    `x` itself when it is a writable C-contiguous float32 array (else still a copy). Rows are
    done in blocks: a whole-array norm would hold a second full-size temporary (x·x) at peak."""
    if not (in_place and reusable(x)):
        x = np.array(x, dtype=np.float32, copy=True, order="C", ndmin=2)
    for lo in range(0, len(x), NORM_BLOCK):
        part = x[lo : lo + NORM_BLOCK]
        # what np.linalg.norm computes (bit for bit), without its per-call argument handling
        norms = np.sqrt(np.add.reduce(part * part, axis=1, keepdims=True))
        if norms.all():
            part /= norms
        else:
            np.divide(part, norms, out=part, where=norms > 0)
    return x


def first_non_finite_row(x: np.ndarray) -> int | None:
    """The first row of 2-D `x` holding NaN or infinity, or None (checked in blocks of rows, so
    no full-size boolean temporary)."""
    for lo in range(0, len(x), NORM_BLOCK):
        bad = ~np.isfinite(x[lo : lo + NORM_BLOCK]).all(axis=1)
        if bad.any():
            return lo + int(np.flatnonzero(bad)[0])
    return None


def reusable(x: np.ndarray) -> bool:
    """Whether `x` can be normalized where it lies: a writable, C-contiguous 2-D float32 array."""
    return (
        isinstance(x, np.ndarray)
        and x.ndim == 2
        and x.dtype == np.float32
        and x.flags.c_contiguous
        and x.flags.writeable
    )


def truncate_normalize(x: np.ndarray, dim: int, in_place: bool = False) -> np.ndarray:
    """Matryoshka: keep the first `dim` components, then re-normalize each row. With `in_place`
    and `dim` the full width, `x` itself is normalized when it can be (`normalize_rows`)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DimensionMismatchError(f"expected a 2-D array of vectors, got one of shape {shape_text(x.shape)}")
    if dim > x.shape[1]:
        raise DimensionMismatchError(f"cannot index at dim {dim}: vectors have {x.shape[1]}")
    if dim == x.shape[1]:
        return normalize_rows(x, in_place)
    return normalize_rows(x[:, :dim])


class StringTable:
    """Strings as one UTF-8 blob plus int64 offsets: two flat arrays that mmap cleanly."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray) -> None:
        self.offsets, self.blob = offsets, blob

    @classmethod
    def from_strings(cls, values: Sequence[str]) -> StringTable:
        encoded = [str(v).encode() for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        return cls(offsets, blob)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        # ids are checked as UTF-8 at load; kept text columns are not scanned, so a corrupt
        # byte there shows as U+FFFD instead of failing the search
        return bytes(self.blob[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8", "replace")

    def sections(self, name: str) -> dict[str, np.ndarray]:
        return {f"{name}.offsets": self.offsets, f"{name}.blob": self.blob}

    @classmethod
    def from_sections(cls, sections: dict[str, np.ndarray], name: str) -> StringTable:
        return cls(sections[f"{name}.offsets"], sections[f"{name}.blob"])


class IdTable:
    """Maps index rows 0..n-1 to the caller's ids: int64 array or a string table."""

    def __init__(self, ints: np.ndarray | None = None, strings: StringTable | None = None) -> None:
        self.ints, self.strings = ints, strings

    @classmethod
    def from_values(cls, values: Sequence[Any] | np.ndarray | None, n: int) -> IdTable:
        if values is None:
            return cls(ints=np.arange(n, dtype=np.int64))
        if len(values) != n:
            raise ValueError(f"{len(values)} ids for {n} vectors")
        arr = np.asarray(values)
        if arr.dtype.kind in "iu":
            return cls(ints=arr.astype(np.int64))
        return cls(strings=StringTable.from_strings([str(v) for v in values]))

    @property
    def kind(self) -> str:
        return "int" if self.ints is not None else "str"

    def __len__(self) -> int:
        return len(self.ints) if self.ints is not None else len(self.strings)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """ids for `rows` (any shape); row -1 (no result) gives -1 / None."""
        rows = np.asarray(rows)
        if self.ints is not None:
            out = np.asarray(self.ints)[np.maximum(rows, 0)]
            return np.where(rows >= 0, out, -1)
        flat = [self.strings[int(r)] if r >= 0 else None for r in rows.reshape(-1)]
        return np.array(flat, dtype=object).reshape(rows.shape)

    def sections(self) -> dict[str, np.ndarray]:
        return {"ids": self.ints} if self.ints is not None else self.strings.sections("ids")

    @classmethod
    def from_sections(cls, sections: dict[str, np.ndarray], kind: str) -> IdTable:
        if kind == "int":
            return cls(ints=sections["ids"])
        return cls(strings=StringTable.from_sections(sections, "ids"))


def _with_direction(q: np.ndarray) -> np.ndarray:
    """Unit query rows; an all-zero one scores every row 0 and would return an arbitrary order."""
    zero = np.flatnonzero(~q.any(axis=1))
    if len(zero):
        raise ValueError(f"query vector {int(zero[0])} is all zeros: it has no direction to search")
    return q


def dataset_source(emb_dir: Path, part_rows: dict[str, int]) -> dict[str, Any]:
    """What an index records about the ingest output it was built from: the directory, the
    parts it holds (name -> rows) and the ingest job that wrote them (`build-index --update`
    adds only the other parts of that same job)."""
    from embedpipe.pipeline.manifest import job_fingerprint

    out: dict[str, Any] = {"embeddings_dir": str(emb_dir), "parts": len(part_rows), "part_rows": dict(part_rows)}
    job = job_fingerprint(emb_dir)
    if job is not None:
        out["ingest_job"] = job
    return out


@dataclass
class IndexMeta:
    """Facts about where the vectors came from, carried in every index header."""

    source_dim: int = 0
    model_sha256: str = ""
    model_path: str = ""
    task: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_header(self) -> dict[str, Any]:
        return {
            "source_dim": self.source_dim,
            "model_sha256": self.model_sha256,
            "model_path": self.model_path,
            "task": self.task,
            "extra": self.extra,
        }

    @classmethod
    def from_dataset(cls, emb: Embeddings) -> IndexMeta:
        """The facts an ingest output dataset records about its vectors (and which parts, with
        how many rows each, the index was built from)."""
        return cls(
            emb.vectors.shape[1],
            emb.meta.model_sha256,
            emb.meta.model_path,
            emb.meta.task,
            dataset_source(emb.path, emb.part_rows),
        )

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> IndexMeta:
        return cls(
            h.get("source_dim", 0),
            h.get("model_sha256", ""),
            h.get("model_path", ""),
            h.get("task", ""),
            h.get("extra", {}),
        )


class VectorIndex:
    """Base of every index type. Subclasses implement `_search_rows`, `save`, `load`, `build`
    and declare the keyword arguments `build` and `_search_rows` take as `build_params` and
    `search_params` (see `params.py`)."""

    kind: ClassVar[str] = ""
    quants: ClassVar[tuple[str, ...]] = ("fp32",)
    build_params: ClassVar[tuple[Param, ...]] = ()
    search_params: ClassVar[tuple[Param, ...]] = ()

    def __init__(
        self, dim: int, quant: str, ids: IdTable, meta: IndexMeta, columns: dict[str, StringTable] | None = None
    ) -> None:
        self.dim, self.quant, self.ids, self.meta = dim, quant, ids, meta
        self.columns = columns or {}
        self.deleted = np.zeros(0, np.int64)  # tombstoned rows (see indexes.tombstones)

    # --- to implement -------------------------------------------------------------------
    def _search_rows(self, queries: np.ndarray, k: int, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    @classmethod
    def build_settings(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every declared build parameter: `params` (checked) over the declared defaults."""
        return {**defaults(cls.build_params), **check_params(cls.kind, cls.build_params, params, "build")}

    @classmethod
    def saved_files(cls, path: str | os.PathLike) -> list[Path]:
        """Every file `save(path)` writes."""
        return [Path(path)]

    @classmethod
    def saved_bytes(cls, path: str | os.PathLike) -> int:
        """Size on disk of the index saved at `path`, all its files together."""
        return sum(f.stat().st_size for f in cls.saved_files(path) if f.exists())

    @property
    def count(self) -> int:
        return len(self.ids)

    # --- shared -------------------------------------------------------------------------
    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """2-D float32 unit rows of width `dim`; Matryoshka-truncate full-width queries. A query
        holding NaN or infinity is an error (it would score every row NaN or -inf)."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        bad = first_non_finite_row(q) if q.ndim == 2 else None  # other shapes are refused below
        if bad is not None:
            raise ValueError(f"query vector {bad} holds NaN or infinity")
        width = q.shape[1] if q.ndim == 2 else -1
        if width == self.dim:
            return _with_direction(normalize_rows(q))
        if width > self.dim and width == self.meta.source_dim:
            return _with_direction(truncate_normalize(q, self.dim))
        allowed = f"{self.dim}" + (
            f" or {self.meta.source_dim}" if self.meta.source_dim and self.meta.source_dim != self.dim else ""
        )
        raise DimensionMismatchError(
            f"query vectors are {shape_text(q.shape)}; this {self.kind} "
            f"index holds {self.dim}-d vectors (queries must be {allowed}-d)"
        )

    def search_rows(self, queries: np.ndarray, k: int, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Batch search: (scores (q, k) float32 descending, rows (q, k) int64, -1 = no hit).

        `knobs` are this type's `search_params` (e.g. hnsw ``ef_search``, annoy ``search_k``);
        one left out takes the value stored in the index.
        """
        q = self.prepare_queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if knobs:
            knobs = check_params(self.kind, self.search_params, knobs, "search")
        if not len(q) or not self.count:  # no queries, or nothing indexed: no hits
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if len(self.deleted):
            from embedpipe.indexes.tombstones import search_alive

            scores, rows = search_alive(self, q, k, **knobs)
        else:
            scores, rows = self._search_rows(q, k, **knobs)
        check_results(self, scores, rows)
        return scores, rows

    def search(self, queries: np.ndarray, k: int = 10, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Batch search returning (scores (q, k), ids (q, k)) with the caller's ids."""
        scores, rows = self.search_rows(queries, k, **knobs)
        return scores, self.ids.take(rows)

    def search_one(self, query: np.ndarray, k: int = 10, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Single-query search: (scores (k,), ids (k,))."""
        scores, ids = self.search(np.asarray(query)[None, :] if np.ndim(query) == 1 else query, k, **knobs)
        return scores[0], ids[0]

    def common_header(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "dim": self.dim,
            "quant": self.quant,
            "count": self.count,
            "metric": METRIC,
            "id_kind": self.ids.kind,
            "columns": sorted(self.columns),
            **self.meta.to_header(),
        }

    def common_sections(self) -> dict[str, np.ndarray]:
        out = dict(self.ids.sections())
        if len(self.deleted):
            out["tombstones"] = np.asarray(self.deleted, np.int64)
        for name, table in self.columns.items():
            out.update(table.sections(f"col.{name}"))
        return out

    @staticmethod
    def common_from(
        path: Any, header: dict[str, Any], sections: dict[str, np.ndarray]
    ) -> tuple[IdTable, IndexMeta, dict]:
        try:
            ids = IdTable.from_sections(sections, header["id_kind"])
            cols = {c: StringTable.from_sections(sections, f"col.{c}") for c in header["columns"]}
        except KeyError as exc:
            raise IndexFileError(path, f"missing section or field {exc}") from None
        if len(ids) != header["count"]:
            raise IndexFileError(path, f"{len(ids)} ids but header count {header['count']}")
        return ids, IndexMeta.from_header(header), cols


def pad_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (q, m) results with m < k to width k using -inf / -1."""
    q, m = rows.shape
    if m >= k:
        return scores[:, :k], rows[:, :k]
    s = np.full((q, k), -np.inf, dtype=np.float32)
    r = np.full((q, k), -1, dtype=np.int64)
    s[:, :m], r[:, :m] = scores, rows
    return s, r


def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row of a (q, n) score matrix: (scores, columns), descending."""
    return topk(scores, k)
