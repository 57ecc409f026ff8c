"""Embedding for evaluation: texts go through `embedpipe.pipeline.ingest`, so every vector an
evaluation computes lands in (and comes from) the ingest embedding cache — a second run of the
same evaluation does not run the model again.

Also: which model embedded an `ingest` output (schema metadata) and where its query texts come
from when the caller supplies none (a text column, else the source files named in the job's
resume manifest).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import IndexMeta
from embedpipe.jsonl import iter_jsonl

MANIFEST = "_manifest.jsonl"


class EvalInputError(EmbedpipeError):
    """Evaluation inputs (queries, datasets, embeddings) are missing or malformed."""


@dataclass
class CacheOptions:
    """Where the ingest embedding cache lives and whether to use it."""

    enabled: bool = True
    cache_dir: str | None = None
    progress: bool = True


def embed_texts(emb: Any, texts: list[str], task: str, titles: list[str | None] | None = None,
                cache: CacheOptions | None = None, dim: int | None = None) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors, in input order, via an ingest job in a temp dir.

    Texts longer than the model's context are truncated (one vector per text, as the
    sentence-transformers reference does). An empty text is an error naming its position.
    """
    from embedpipe.indexes.source import read_embeddings
    from embedpipe.pipeline import IngestConfig, ingest

    cache = cache or CacheOptions()
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise EvalInputError(f"text {i} is empty or not a string; it cannot be embedded")
    if not texts:
        return np.zeros((0, dim or emb.dims[0]), np.float32)
    with tempfile.TemporaryDirectory(prefix="embedpipe-eval-") as tmp:
        src = Path(tmp) / "texts.jsonl"
        with open(src, "w", encoding="utf-8") as fh:
            for i, t in enumerate(texts):
                row = {"i": i, "text": t}
                if titles is not None:
                    row["title"] = titles[i] or ""
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        cfg = IngestConfig(inputs=[str(src)], output=str(Path(tmp) / "out"), model=emb.model_path,
                           id_col="i", title_col="title" if titles is not None else None,
                           task=task, dim=dim, long="truncate", on_bad="fail",
                           cache=cache.enabled, cache_dir=cache.cache_dir, progress=cache.progress)
        ingest(cfg, embedder=emb)
        got = read_embeddings(Path(tmp) / "out", keep_text=False)
    order = np.argsort(np.asarray(got.ids, dtype=np.int64), kind="stable")
    vectors = got.vectors[order]
    if len(vectors) != len(texts):
        raise EvalInputError(f"ingest returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def load_embedder(meta: IndexMeta, model: str | None = None, backend: str = "auto",
                  threads: int | None = None) -> Any:
    """The model that wrote the embeddings: `model` if given, else the path recorded in the
    metadata, else the cached default model — refused if its SHA-256 differs from the record."""
    from embedpipe.runtime.embedder import Embedder

    path = model or (meta.model_path if meta.model_path and Path(meta.model_path).exists() else None)
    emb = Embedder.load(path, backend=backend, threads=threads)
    if meta.model_sha256 and emb.model_sha256 != meta.model_sha256:
        raise EvalInputError(
            f"the embeddings were written by model {meta.model_sha256[:12]}… "
            f"({meta.model_path or 'path not recorded'}) but {emb.model_path} is "
            f"{emb.model_sha256[:12]}…; pass --model with the original GGUF")
    return emb


def read_query_file(path: str | os.PathLike) -> list[str]:
    """Query texts from JSONL ({"text": …} per line) or Parquet (a `text` column)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such queries file")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise EvalInputError(f"{path}: no 'text' column (columns: {table.column_names})")
        texts = table.column("text").to_pylist()
    else:
        texts = []
        for lineno, row in iter_jsonl(path, EvalInputError):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise EvalInputError(f'{path}:{lineno}: expected an object with a string "text"')
            texts.append(row["text"])
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise EvalInputError(f"{path}: no non-empty query texts")
    return texts


def manifest_header(emb_dir: Path) -> dict | None:
    try:
        with open(emb_dir / MANIFEST, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) and header.get("kind") == "header" else None


def _texts_from_sources(header: dict, wanted: set) -> dict:
    """id -> text for `wanted` ids, streamed from the input files the ingest job read."""
    from embedpipe.pipeline.readers import Corpus

    text_col, id_col = header.get("text_col") or "text", header.get("id_col")
    paths = [d["path"] for d in header.get("inputs", [])]
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        raise EvalInputError(f"the source files of the embeddings are gone ({', '.join(missing) or 'none recorded'})")
    cols = [text_col] + ([id_col] if id_col else [])
    found: dict = {}
    for start, _, batch in Corpus.open(paths, cols).batches(cols):
        texts = batch.column(batch.schema.get_field_index(text_col)).to_pylist()
        ids = (batch.column(batch.schema.get_field_index(id_col)).to_pylist() if id_col
               else range(start, start + batch.num_rows))
        for i, t in zip(ids, texts):
            if i in wanted:
                found[i] = t
    return found


def sample_corpus_queries(emb_dir: str | os.PathLike, ids: list | np.ndarray,
                          columns: dict[str, list[str]], n: int, seed: int = 0) -> list[str]:
    """`n` texts of corpus rows picked at random (seeded): from a `text` column of the
    embeddings when one was kept, else from the source files recorded in the ingest manifest."""
    emb_dir = Path(emb_dir)
    rng = np.random.default_rng(seed)
    ids = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    header = manifest_header(emb_dir) or {}
    text_col = header.get("text_col") or "text"
    for col in (text_col, "text"):
        if col in columns:
            pool = sorted({t for t in columns[col] if t.strip()})
            if not pool:
                break
            return [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
    if not header:
        raise EvalInputError(f"{emb_dir}: the embeddings carry no text column and no ingest manifest "
                             "names their source; pass --queries F.jsonl|F.parquet")
    unique = list(dict.fromkeys(ids))
    picks = {unique[i] for i in rng.choice(len(unique), min(3 * n, len(unique)), replace=False)}
    try:
        found = _texts_from_sources(header, picks)
    except (EmbedpipeError, OSError, pa.ArrowException) as exc:
        raise EvalInputError(f"{emb_dir}: no text column in the embeddings and reading the source "
                             f"failed ({exc}); pass --queries F.jsonl|F.parquet") from None
    pool = sorted({t for t in found.values() if isinstance(t, str) and t.strip()})
    if not pool:
        raise EvalInputError(f"{emb_dir}: found no texts for the sampled rows; pass --queries")
    return [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
