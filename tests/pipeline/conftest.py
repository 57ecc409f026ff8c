"""Fixtures for pipeline tests: the tiny synthetic model loaded once and small corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.pipeline import IngestConfig, ingest

WORDS = (
    "the quick brown fox jumps over lazy dog bread flour water salt yeast vector index "
    "parquet files stream through pipeline embeddings map text to vectors"
).split()


def make_texts(n: int, seed: int = 0, max_words: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, max_words + 1)))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_emb(tiny_gguf):
    from embedpipe.runtime.embedder import Embedder

    return Embedder.load(tiny_gguf, backend="numpy")


@pytest.fixture
def corpus(tmp_path) -> Path:
    texts = make_texts(120)
    path = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table({"text": texts, "doc": [f"d{i}" for i in range(len(texts))], "year": list(range(len(texts)))}),
        path,
        row_group_size=50,
    )
    return path


def read_out(out: Path) -> pa.Table:
    files = sorted(out.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture
def run(tiny_emb, tmp_path):
    """run(inputs, **config) -> (summary, table) with the cache in tmp_path unless given."""
    counter = iter(range(10**6))

    def _run(inputs, out=None, embedder=tiny_emb, **kw):
        out = out or tmp_path / f"out{next(counter)}"
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        kw.setdefault("progress", False)
        cfg = IngestConfig(
            inputs=[str(p) for p in (inputs if isinstance(inputs, list) else [inputs])], output=str(out), **kw
        )
        summary = ingest(cfg, embedder=embedder)
        return summary, read_out(Path(out))

    return _run
