"""What the fuzzer does with one mutated file (runs inside the worker subprocess).

Each target opens the file the way a user would reach it (`Embedder.load` + `encode`,
`load_index` + `search`, `AnnoyIndex.load_spotify`, `ingest`) and returns the float arrays it
produced, so the worker can flag non-finite output that came back without an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog."]
_embedders: dict[str, Any] = {}


def gguf_embed(case: dict) -> list[np.ndarray]:
    from embedpipe.runtime.embedder import Embedder

    emb = Embedder.load(case["path"], backend=case.get("backend", "auto"), threads=1)
    return [emb.encode(TEXTS, task="query")]


def _queries(dim: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, dim)).astype(np.float32)


def _search(index: Any) -> list[np.ndarray]:
    scores, rows = index.search_rows(_queries(index.dim), 5)
    hits = scores[rows >= 0]
    index.search(_queries(index.dim, 8)[:1], 3)
    return [hits]


def index_search(case: dict) -> list[np.ndarray]:
    from embedpipe.indexes.registry import load_index

    return _search(load_index(case["path"], verify=case.get("verify", True)))


def annoy_spotify(case: dict) -> list[np.ndarray]:
    from embedpipe.indexes.annoy import AnnoyIndex

    return _search(AnnoyIndex.load_spotify(case["path"], case["dim"]))


def ingest_file(case: dict) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    from embedpipe.pipeline.config import IngestConfig
    from embedpipe.pipeline.job import ingest
    from embedpipe.runtime.embedder import Embedder

    model = case["model"]
    if model not in _embedders:
        _embedders[model] = Embedder.load(model, backend="numpy", threads=1)
    out = Path(case["path"]).with_suffix(".out")
    cfg = IngestConfig(
        inputs=[case["path"]],
        output=str(out),
        model=model,
        id_col=case.get("id_col"),
        cache=False,
        overwrite=True,
        **case.get("options", {}),
    )
    ingest(cfg, embedder=_embedders[model])
    arrays = []
    for part in sorted(out.glob("*.parquet")):
        col = pq.read_table(part, columns=["embedding"]).column("embedding").combine_chunks()
        arrays.append(np.asarray(col.values.to_numpy(zero_copy_only=False), np.float32))
    return arrays


TARGETS: dict[str, Callable[[dict], list[np.ndarray]]] = {
    "gguf": gguf_embed,
    "index": index_search,
    "annoy_spotify": annoy_spotify,
    "ingest": ingest_file,
}
