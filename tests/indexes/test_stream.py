"""Streamed builds (part by part, no float copy of the corpus) equal in-memory builds byte for byte."""

from __future__ import annotations

import pytest

from embedpipe.indexes.base import IndexMeta
from embedpipe.indexes.registry import Builder
from embedpipe.indexes.stream import build_streamed, stream_codes
from embedpipe.pipeline.dataset import read_embeddings

from .helpers import clustered
from .test_update import write_part


@pytest.fixture()
def emb(tmp_path):
    x = clustered(1300, 48, seed=51)
    for k, lo in enumerate(range(0, 1300, 400)):
        write_part(tmp_path / "emb", k, x[lo : lo + 400], lo)
    return tmp_path / "emb"


@pytest.mark.parametrize(
    "kind,quant,mode,dim",
    [
        ("brute", "int8", "dim", None),
        ("brute", "int8", "vector", 32),
        ("brute", "int16", "dim", 16),
        ("hnsw", "fp32", "dim", 32),
        ("hnsw", "int8", "dim", None),
    ],
)
def test_streamed_equals_in_memory(emb, tmp_path, kind, quant, mode, dim):
    params = {"m": 8, "ef_construction": 40} if kind == "hnsw" else {}
    data = read_embeddings(emb)
    whole = (
        Builder(kind, quant, dim, IndexMeta.from_dataset(data), scale_mode=mode, **params)
        .add(data.vectors, data.ids, data.columns)
        .build()
    )
    streamed = build_streamed(emb, kind, quant, dim, scale_mode=mode, **params)
    whole.save(tmp_path / "a")
    streamed.save(tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_stream_codes_holds_only_codes(emb):
    c = stream_codes(emb, "int8", "dim")
    assert c.codes.dtype.name == "int8" and c.codes.shape == (1300, 48)
    assert c.columns["title"][1299] == "t1299" and c.meta.extra["parts"] == 4


def test_dim_out_of_range_names_the_argument(emb):
    """One check, two spellings: Python names the argument, the CLI its flag."""
    from embedpipe.pipeline.dataset import EmbeddingsDirError

    with pytest.raises(EmbeddingsDirError) as info:
        stream_codes(emb, "int8", dim=0)
    assert str(info.value).startswith("dim 0 must be between 1 and the embeddings' width 48")
    assert info.value.cli_message().startswith("--dim 0 must be between 1")
