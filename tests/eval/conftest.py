"""Fixtures for eval tests: a small corpus ingested with the tiny model, a tiny BEIR dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.pipeline import IngestConfig, ingest

WORDS = (
    "apple banana cherry grape lemon mango orange pear plum melon river mountain forest "
    "desert ocean island valley canyon glacier volcano engine wheel rocket train bicycle "
    "boat plane truck"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(2, 7)))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_emb(tiny_gguf):
    from embedpipe.runtime.embedder import Embedder

    return Embedder.load(tiny_gguf, backend="numpy")


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture(scope="session")
def emb_dir(tmp_path_factory, tiny_emb, eval_cache) -> Path:
    """300 rows ingested with the tiny model; the text column is NOT kept (manifest fallback)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = make_texts(300)
    src = root / "corpus.parquet"
    pq.write_table(pa.table({"text": texts, "name": [f"n{i}" for i in range(len(texts))]}), src)
    ingest(
        IngestConfig(
            inputs=[str(src)],
            output=str(root / "emb"),
            keep=["name"],
            task="document",
            cache_dir=str(eval_cache),
            progress=False,
        ),
        embedder=tiny_emb,
    )
    return root / "emb"


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory) -> Path:
    """A tiny BEIR dataset: 60 docs, 8 queries, qrels with CRLF line ends and a header."""
    root = tmp_path_factory.mktemp("beir")
    texts = make_texts(60, seed=1)
    with open(root / "corpus.jsonl", "w") as fh:
        for i, t in enumerate(texts):
            fh.write(
                json.dumps({"_id": f"d{i}", "title": t.split()[0] if i % 3 else "", "text": t, "metadata": {}}) + "\n"
            )
    with open(root / "queries.jsonl", "w") as fh:
        for q in range(10):
            fh.write(json.dumps({"_id": f"q{q}", "text": texts[q * 5]}) + "\n")
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"]
    for q in range(8):  # q8, q9 unjudged
        lines.append(f"q{q}\td{q * 5}\t1")
        lines.append(f"q{q}\td{q * 5 + 1}\t{q % 2}")  # grade 0 for even q
    (root / "qrels" / "test.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root
