"""Files of in-memory embeddings (`embedpipe embed -o`), the format chosen by the extension.

- `.npy`: the (n, dim) float32 matrix, rows in input order.
- `.jsonl`: one {"index", "text", "embedding"} object per input, in input order.
- `.parquet`: columns index (int64), text (string), embedding (fixed-size list of float32).

Written beside the target and renamed over it, so a failed run leaves no half file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.output_files import check_output_file


def _write_npy(path: Path, texts: Sequence[str], vectors: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, vectors)


def _write_jsonl(path: Path, texts: Sequence[str], vectors: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, (text, vec) in enumerate(zip(texts, vectors)):
            row = {"index": i, "text": text, "embedding": [float(v) for v in vec]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(path: Path, texts: Sequence[str], vectors: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "index": pa.array(np.arange(n, dtype=np.int64)),
            "text": pa.array(list(texts), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    pq.write_table(table, path)


WRITERS: dict[str, Callable[[Path, Sequence[str], np.ndarray], None]] = {
    ".npy": _write_npy,
    ".jsonl": _write_jsonl,
    ".parquet": _write_parquet,
}


def check_output_path(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Callable[..., None]:
    """The writer for `path`, once it is known to be writable there (`check_output_file`), so a
    bad path costs no forward pass."""
    path = check_output_file(path, WRITERS, () if source is None else (source,))
    return WRITERS[path.suffix.lower()]


def write_embeddings(path: str | os.PathLike, texts: Sequence[str], vectors: np.ndarray) -> None:
    """Write `vectors` (one row per text, input order) to `path` in the format its extension names."""
    path = Path(path)
    writer = check_output_path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        writer(tmp, texts, vectors)
        tmp.replace(path)
    except OSError as exc:  # named by the path asked for, not the temporary file beside it
        raise EmbedpipeError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
