"""The well-formed files the mutators start from: tiny models, small indexes, small corpora."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.synthetic import build_tiny_model

INDEX_DIM = 32  # a multiple of the kernels' 16 lanes, so the JIT search paths run
INDEX_ROWS = 160


@dataclass
class Seeds:
    models: list[Path]
    indexes: list[Path]  # our container files (annoy: the .ann beside its .ids sidecar)
    spotify: list[Path]  # bare annoy files (dim INDEX_DIM)
    corpora: list[Path]


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    return (centres[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def build_models(d: Path) -> list[Path]:
    return [build_tiny_model(d, qtype=q).path for q in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0)]


def build_indexes(d: Path) -> tuple[list[Path], list[Path]]:
    from embedpipe.indexes.registry import build_index

    x = _vectors(INDEX_ROWS, INDEX_DIM, 1)
    str_ids = [f"doc-{i}" for i in range(INDEX_ROWS)]
    specs = [
        ("brute", "fp32", {}, None),
        ("brute", "int8", {"scale_mode": "dim"}, str_ids),
        ("brute", "int16", {"scale_mode": "vector"}, None),
        ("brute", "int8", {"scale_mode": "vector"}, None),
        ("annoy", "fp32", {"n_trees": 4}, str_ids),
        ("hnsw", "fp32", {"m": 6, "ef_construction": 24}, None),
        ("hnsw", "int8", {"m": 6, "ef_construction": 24, "scale_mode": "dim"}, str_ids),
        ("hnsw", "int8", {"m": 6, "ef_construction": 24, "scale_mode": "vector"}, None),
    ]
    out = []
    for i, (kind, quant, params, ids) in enumerate(specs):
        path = d / f"seed-{i}-{kind}-{quant}.idx"
        build_index(x, ids, kind=kind, quant=quant, **params).save(path)
        out.append(path)
    spotify = []
    try:
        import annoy
    except ImportError:
        annoy = None
    if annoy is not None:
        a = annoy.AnnoyIndex(INDEX_DIM, "angular")
        a.set_seed(0)  # the same file every run, so a campaign seed replays the same cases
        for i, v in enumerate(x):
            a.add_item(i, v.tolist())
        a.build(4, n_jobs=1)
        path = d / "spotify.ann"
        a.save(str(path))
        a.unload()
        spotify.append(path)
    spotify.append(out[4])  # ours is byte-compatible with Spotify's layout
    return out, spotify


def build_corpora(d: Path) -> list[Path]:
    texts = ["alpha beta", "gamma delta", "", None, "epsilon", "alpha beta"]
    table = pa.table({"id": ["a", "b", "c", "d", "e", "a"], "text": texts})
    out = []
    pq.write_table(table, d / "corpus.parquet")
    out.append(d / "corpus.parquet")
    lines = [
        b'{"id": "a", "text": "alpha beta"}',
        b'{"id": "b", "text": "gamma"}',
        b"[1, 2]",
        b'{"id": "c", "text": "caf\xc3\xa9"}',
        b'{"id": "a", "text": "dup id"}',
    ]
    (d / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out.append(d / "corpus.jsonl")
    (d / "corpus.csv").write_bytes(b'id,text\na,alpha beta\nb,gamma delta\nc,"quoted, text"\na,dup\n')
    out.append(d / "corpus.csv")
    with pa.OSFile(str(d / "corpus.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    out.append(d / "corpus.arrow")
    return out


def build_seeds(d: Path) -> Seeds:
    d.mkdir(parents=True, exist_ok=True)
    indexes, spotify = build_indexes(d)
    return Seeds(build_models(d), indexes, spotify, build_corpora(d))
