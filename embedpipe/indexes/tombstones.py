"""Deletes without a rebuild: tombstoned rows, filtered out of every search, dropped by compact.

A tombstone is a row number in the index's ``tombstones`` section (sorted int64). Search asks
the index type for k plus up to `MAX_EXTRA` more hits and drops tombstoned rows, so results stay
exact for brute and as good as the graph for HNSW. HNSW keeps routing through tombstoned nodes
(removing one would cut paths) until the next `--update`, which unlinks them from every live
list and reconnects each affected node through the deleted neighbour's own neighbours
(`hnsw_build.unlink_deleted`). `compact` rebuilds the index from the live rows with the same
parameters and seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import IdTable, StringTable, VectorIndex, pad_topk
from embedpipe.indexes.quant import dequantize

SECTION = "tombstones"
MAX_EXTRA = 1024  # extra hits requested per query to make room for dropped tombstones


class DeleteError(EmbedpipeError):
    """Ids to delete are not in the index, or the index type cannot hold tombstones."""


def tombstones_of(path: Any, sections: dict[str, np.ndarray], count: int) -> np.ndarray:
    """The stored tombstones, checked: sorted, unique rows of this index."""
    from embedpipe.indexes.format import IndexFileError

    t = sections.get(SECTION)
    if t is None:
        return np.zeros(0, np.int64)
    t = np.asarray(t, np.int64).reshape(-1)
    if len(t) and (t[0] < 0 or t[-1] >= count or (np.diff(t) <= 0).any()):
        raise IndexFileError(path, f"tombstones are not sorted unique rows below {count}")
    return t


def search_alive(index: VectorIndex, q: np.ndarray, k: int, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
    """`index._search_rows` with tombstoned rows removed; (scores, rows) padded to k."""
    wide = min(index.count, k + min(len(index.deleted), MAX_EXTRA))
    s, r = index._search_rows(q, max(wide, k), **knobs)
    dead = np.isin(r, index.deleted) | (r < 0)
    order = np.argsort(dead, axis=1, kind="stable")
    s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    alive = ~np.take_along_axis(dead, order, 1)
    s, r = np.where(alive, s, -np.inf).astype(np.float32), np.where(alive, r, -1)
    return pad_topk(s, r, k)


def rows_of_ids(ids: IdTable, wanted: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """(rows whose id is in `wanted`, wanted ids that match no row)."""
    if ids.kind == "int":
        try:
            w = np.asarray([int(v) for v in wanted], np.int64)
        except (TypeError, ValueError):
            raise DeleteError("this index has integer ids; got a non-integer id") from None
        table = np.asarray(ids.ints)
        rows = np.flatnonzero(np.isin(table, w))
        missing = sorted(set(w.tolist()) - set(table[rows].tolist()))
        return rows.astype(np.int64), missing
    want = {str(v) for v in wanted}
    rows = [i for i in range(len(ids)) if ids.strings[i] in want]
    found = {ids.strings[i] for i in rows}
    return np.asarray(rows, np.int64), sorted(want - found)


def delete_ids(path: str | os.PathLike, wanted: Sequence[Any], missing_ok: bool = False) -> tuple[int, int]:
    """Tombstone the rows of `wanted` ids in the index at `path` (rewritten atomically).
    Returns (rows newly tombstoned, total tombstones)."""
    from embedpipe.indexes.update import index_lock

    with index_lock(path):
        return _delete(path, wanted, missing_ok)


def _holding_tombstones(index: VectorIndex, path: str | os.PathLike) -> VectorIndex:
    """`index`, if its type can hold tombstones (Annoy's file layout has no room for them)."""
    if index.kind == "annoy":
        raise DeleteError(
            f"{path}: annoy indexes cannot hold tombstones (nothing to delete or compact); "
            "rebuild without the rows instead"
        )
    return index


def _delete(path: str | os.PathLike, wanted: Sequence[Any], missing_ok: bool) -> tuple[int, int]:
    from embedpipe.indexes.registry import load_index

    index = _holding_tombstones(load_index(path), path)
    rows, missing = rows_of_ids(index.ids, wanted)
    if missing and not missing_ok:
        shown = ", ".join(str(m) for m in missing[:5])
        raise DeleteError(
            f"{path}: {len(missing)} id(s) not in the index ({shown}"
            f"{', …' if len(missing) > 5 else ''}); nothing deleted"
        )
    before = len(index.deleted)
    index.deleted = np.union1d(index.deleted, rows).astype(np.int64)
    index.save(path)
    return len(index.deleted) - before, len(index.deleted)


def compact(
    path: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool = False
) -> tuple[VectorIndex, int]:
    """Rebuild the index at `path` without its tombstoned rows (same type, quant, parameters,
    seed); writes `out` (default: `path`, atomically). Returns (new index, rows dropped). With
    no tombstones and no `out` there is nothing to do: the index is returned as it is."""
    from embedpipe.indexes.update import index_lock
    from embedpipe.output_files import check_output_file

    if out is not None:
        check_output_file(out)
    with index_lock(path):
        return _compact(path, out, progress)


def _compact(path: str | os.PathLike, out: str | os.PathLike | None, progress: bool) -> tuple[VectorIndex, int]:
    from embedpipe.indexes.registry import INDEX_TYPES, load_index

    index = _holding_tombstones(load_index(path), path)
    dropped = len(index.deleted)
    if dropped == 0 and out is None:
        return index, 0
    alive = np.setdiff1d(np.arange(index.count), index.deleted)
    codes = np.asarray(index.codes)[alive]
    mode = getattr(index, "scale_mode", "vector")
    scale = index.scale[alive] if index.quant != "fp32" and mode == "vector" else index.scale
    vectors = dequantize(codes, scale, mode, index.offset)
    ids = (
        IdTable(ints=np.asarray(index.ids.ints)[alive])
        if index.ids.kind == "int"
        else IdTable(strings=StringTable.from_strings([index.ids.strings[int(i)] for i in alive]))
    )
    cols = {n: StringTable.from_strings([t[int(i)] for i in alive]) for n, t in index.columns.items()}
    params = dict(getattr(index, "params", {}))
    for key in ("entry", "max_level"):
        params.pop(key, None)
    params["scale_mode"] = mode
    new = INDEX_TYPES[index.kind].build(
        vectors, ids, index.meta, quant=index.quant, columns=cols, progress=progress, **params
    )
    new.save(out or path)
    return new, dropped
