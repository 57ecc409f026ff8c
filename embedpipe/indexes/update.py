"""Growing an existing index: `build-index EMB_DIR --update PATH`.

The index header records which ingest parts it holds (``extra.part_rows``: part file name ->
rows). An update reads only the parts that are not listed, inserts their rows (HNSW: the same
batched insertion as a build; brute: appended codes, quantized with the index's calibration)
and writes the whole index to a temp file that is renamed over the old one, so a kill at any
moment leaves either the old or the new index, both complete; running the update again
redoes the unfinished work. Tombstoned rows stay tombstoned.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import IdTable, StringTable, VectorIndex, truncate_normalize
from embedpipe.indexes.quant import quantize


class UpdateError(EmbedpipeError):
    """An index cannot be updated from this embeddings directory."""


def extend_ids(ids: IdTable, new: Sequence[Any] | np.ndarray | None, count: int) -> IdTable:
    """`ids` followed by `new` (default: continuing row numbers); kinds must agree."""
    n0 = len(ids)
    if new is None:
        new = np.arange(n0, n0 + count, dtype=np.int64)
    if len(new) != count:
        raise ValueError(f"{len(new)} ids for {count} vectors")
    arr = np.asarray(new)
    if ids.kind == "int":
        if arr.dtype.kind not in "iu":
            raise UpdateError("the index has integer ids but the new rows have string ids")
        return IdTable(ints=np.concatenate([np.asarray(ids.ints), arr.astype(np.int64)]))
    tail = StringTable.from_strings([str(v) for v in arr.tolist()])
    return IdTable(strings=_concat_strings(ids.strings, tail))


def _concat_strings(a: StringTable, b: StringTable) -> StringTable:
    offsets = np.concatenate([np.asarray(a.offsets), np.asarray(b.offsets[1:]) + a.offsets[-1]])
    return StringTable(offsets.astype(np.int64), np.concatenate([np.asarray(a.blob), np.asarray(b.blob)]))


def extend_columns(
    columns: dict[str, StringTable], new: dict[str, Sequence[str]] | None, n0: int, count: int
) -> dict[str, StringTable]:
    """Kept text columns extended by `count` rows (a column the new rows lack gets "")."""
    new = new or {}
    out = {}
    for name in sorted(set(columns) | set(new)):
        old = columns.get(name) or StringTable.from_strings([""] * n0)
        values = new.get(name) or [""] * count
        out[name] = _concat_strings(old, StringTable.from_strings([str(v) for v in values]))
    return out


def _extend_brute(index: Any, vectors: np.ndarray, ids: Any, columns: Any, progress: bool) -> None:
    n0 = index.count
    codes, scale, _ = quantize(
        vectors, index.quant, index.scale_mode, calibration=index.scheme.calibration(index.scale, index.offset)
    )
    index.ids = extend_ids(index.ids, ids, len(vectors))
    index.columns = extend_columns(index.columns, columns, n0, len(vectors))
    index.codes = np.concatenate([index.codes, codes])
    index.scale = index.scheme.extend_scale(index.scale, scale)
    index._q8 = None


def _extend_hnsw(index: Any, vectors: np.ndarray, ids: Any, columns: Any, progress: bool) -> None:
    index.add(vectors, ids, columns, progress=progress)


EXTENDERS: dict[str, Callable[..., None]] = {"brute": _extend_brute, "hnsw": _extend_hnsw}


def extend_index(
    index: VectorIndex,
    vectors: np.ndarray,
    ids: Any = None,
    columns: dict[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> None:
    """Add rows (full-width or index-width float vectors) to `index` in place."""
    if index.kind not in EXTENDERS:
        raise UpdateError(
            f"{index.kind} indexes cannot be updated in place; rebuild them (updatable: {', '.join(EXTENDERS)})"
        )
    x = np.asarray(vectors, np.float32)
    if x.shape[1] != index.dim:
        x = truncate_normalize(x, index.dim) if x.shape[1] > index.dim else x
    EXTENDERS[index.kind](index, index.prepare_queries(x), ids, columns, progress)


@contextmanager
def index_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock for rewriting the index at `path` (update, delete, compact); removes the
    temp files a killed rewrite left behind."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"{path}: another update, delete or compact is running") from None
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _refuse_held_ids(index: VectorIndex, new_ids: Any, emb_dir: str | os.PathLike) -> None:
    """New rows may not reuse an id the index already holds: search would return it twice."""
    from embedpipe.indexes.tombstones import rows_of_ids

    if new_ids is None or (index.ids.kind == "int" and np.asarray(new_ids).dtype.kind not in "iu"):
        return  # row numbers continue the index's; a kind mismatch is named by `extend_ids`
    new = np.asarray(new_ids).tolist()
    held, missing = rows_of_ids(index.ids, new)
    if len(held):
        absent = set(missing)
        clash = [v for v in new if (v if index.ids.kind == "int" else str(v)) not in absent]
        shown = ", ".join(str(v) for v in clash[:3])
        raise UpdateError(
            f"{emb_dir}: {len(clash)} new row(s) reuse ids the index already holds ({shown}"
            f"{', …' if len(clash) > 3 else ''}); nothing added"
        )


def update_from_dir(
    emb_dir: str | os.PathLike, path: str | os.PathLike, progress: bool = False
) -> tuple[VectorIndex, int]:
    """Add the rows of ingest parts of `emb_dir` that `path` does not hold yet; rewrite `path`
    atomically. Returns (index, rows added)."""
    with index_lock(path):
        return _update(emb_dir, path, progress)


def _update(emb_dir: str | os.PathLike, path: str | os.PathLike, progress: bool) -> tuple[VectorIndex, int]:
    from embedpipe.indexes.registry import load_index
    from embedpipe.pipeline.dataset import PART_GLOB, read_embeddings
    from embedpipe.pipeline.manifest import job_fingerprint

    index = load_index(path)
    held = dict(index.meta.extra.get("part_rows") or {})
    if not held:
        raise UpdateError(
            f"{path}: the index does not record which ingest parts it holds "
            "(built before --update existed, or from foreign embeddings); "
            "rebuild it once"
        )
    parts = sorted(p.name for p in Path(emb_dir).glob(PART_GLOB))
    gone = sorted(set(held) - set(parts))
    if gone:
        raise UpdateError(
            f"{emb_dir}: parts {', '.join(gone[:3])} that {path} holds are "
            "missing; this is not the directory the index was built from"
        )
    job = index.meta.extra.get("ingest_job")
    if job is not None and job_fingerprint(emb_dir) != job:
        raise UpdateError(
            f"{emb_dir}: written by another ingest job (other inputs or settings) than the parts "
            f"{path} holds; build a new index from it, or update from the directory the index was built from"
        )
    new = [p for p in parts if p not in held]
    if not new:
        return index, 0
    emb = read_embeddings(emb_dir, keep_text=bool(index.columns), parts=new)
    if emb.meta.model_sha256 != index.meta.model_sha256:
        raise UpdateError(
            f"{emb_dir}: new parts come from model {emb.meta.model_sha256[:16]}…, "
            f"the index from {index.meta.model_sha256[:16]}…"
        )
    _refuse_held_ids(index, emb.ids, emb_dir)
    extend_index(index, emb.vectors, emb.ids, emb.columns if index.columns else None, progress)
    held.update(emb.part_rows)
    index.meta.extra = dict(index.meta.extra, part_rows=held, parts=len(held))
    index.save(path)
    return index, len(emb.vectors)
