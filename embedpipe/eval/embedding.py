"""Texts for evaluation: embedding them through the ingest embedding cache (a second run of the
same evaluation does not run the model again), query files, and queries sampled from a corpus
(a kept text column, else the source files named in the ingest manifest).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.jsonl import iter_queries
from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.pipeline.dataset import source_texts
from embedpipe.pipeline.encode import encode_cached
from embedpipe.pipeline.manifest import read_header


class EvalInputError(EmbedpipeError):
    """Evaluation inputs (queries, datasets, embeddings) are missing or malformed."""


#: the value shown with the queries-file hint
QUERY_FILE_HINT = {"queries_file": "F.jsonl|F.parquet"}


class QueriesNeededError(EvalInputError, ArgumentError):
    """No queries can be sampled from the corpus: the hint names the queries-file argument
    (`queries_file=` in Python, `--queries` on the CLI)."""


@dataclass
class CacheOptions:
    """Where the ingest embedding cache lives and whether to use it."""

    enabled: bool = True
    cache_dir: str | None = None
    progress: bool = True


def embed_texts(
    emb: Any,
    texts: list[str],
    task: str,
    titles: list[str | None] | None = None,
    cache: CacheOptions | None = None,
    dim: int | None = None,
) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors, in input order, through the embedding cache.

    Texts longer than the model's context are truncated (one vector per text, as the
    sentence-transformers reference does). An empty text without a title is an error naming
    its position.
    """
    cache = cache or CacheOptions()
    store = EmbeddingCache.in_dir(cache.cache_dir) if cache.enabled else None
    try:
        return encode_cached(emb, texts, task, titles, dim, store, cache.progress)
    except EmbedpipeError as exc:
        raise EvalInputError(str(exc)) from None
    finally:
        if store is not None:
            store.close()


def read_query_file(path: str | os.PathLike) -> list[str]:
    """Query texts from JSONL (as `search -i` reads them: a string, {"query": …} or {"text": …}
    per line) or Parquet (a string `text` column); a blank or null query is an error naming its
    line or row, in both."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such queries file")
    if path.suffix == ".parquet":
        texts = _parquet_queries(path)
    else:
        texts = [text for _, text in iter_queries(path, EvalInputError)]
    if not texts:
        raise EvalInputError(f"{path}: no query texts")
    return texts


def _parquet_queries(path: Path) -> list[str]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise EvalInputError(f"{path}: not a readable Parquet file ({exc})") from None
    if "text" not in table.column_names:
        raise EvalInputError(f"{path}: no 'text' column (columns: {table.column_names})")
    column = table.column("text")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise EvalInputError(f"{path}: the 'text' column holds {column.type}, not strings")
    texts = column.to_pylist()
    for row, text in enumerate(texts):
        if text is None or not text.strip():
            raise EvalInputError(f"{path}: row {row}: the query is empty; a query needs something to search for")
    return texts


def sample_corpus_queries(
    emb_dir: str | os.PathLike, ids: list | np.ndarray, columns: dict[str, list[str]], n: int, seed: int = 0
) -> list[str]:
    """`n` texts of corpus rows picked at random (seeded): from a `text` column of the
    embeddings when one was kept, else from the source files recorded in the ingest manifest."""
    emb_dir = Path(emb_dir)
    rng = np.random.default_rng(seed)
    ids = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    header = read_header(emb_dir) or {}
    text_col = header.get("text_col") or "text"
    for col in (text_col, "text"):
        if col in columns:
            pool = sorted({t for t in columns[col] if t.strip()})
            if not pool:
                break
            return [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
    if not header:
        raise QueriesNeededError(
            "queries_file",
            f"{emb_dir}: the embeddings carry no text column and no ingest manifest names their source; "
            "pass {queries_file}",
            values=QUERY_FILE_HINT,
        )
    unique = list(dict.fromkeys(ids))
    picks = {unique[i] for i in rng.choice(len(unique), min(3 * n, len(unique)), replace=False)}
    try:
        found = source_texts(emb_dir, picks)
    except (EmbedpipeError, OSError, pa.ArrowException) as exc:
        raise QueriesNeededError(
            "queries_file",
            f"{emb_dir}: no text column in the embeddings and reading the source failed ({exc}); pass {{queries_file}}",
            values=QUERY_FILE_HINT,
        ) from None
    pool = sorted({t for t in found.values() if isinstance(t, str) and t.strip()})
    if not pool:
        raise QueriesNeededError(
            "queries_file",
            f"{emb_dir}: found no texts for the sampled rows; pass {{queries_file}}",
            values=QUERY_FILE_HINT,
        )
    return [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
