"""Behaviour every index type shares: round trip, recall vs exact fp32, ids, dims."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes import INDEX_TYPES, Builder, DimensionMismatchError, build_index, load_index
from embedpipe.indexes.base import IndexMeta, truncate_normalize

from .helpers import DATASETS, clustered, exact_topk, recall

CONFIGS = [(kind, quant) for kind, cls in INDEX_TYPES.items() for quant in cls.quants]
PARAMS = {"brute": {}, "annoy": {"n_trees": 10, "search_k": 3000}, "hnsw": {"m": 12, "ef_search": 64}}
# recall@10 floors vs exact fp32 on 1000 x 64 (int8 on 64-d clustered data has real ties)
FLOOR = {
    ("brute", "fp32"): 1.0,
    ("brute", "int16"): 0.999,
    ("brute", "int8"): 0.95,
    ("annoy", "fp32"): 0.95,
    ("hnsw", "fp32"): 0.97,
    ("hnsw", "int8"): 0.93,
}


@pytest.fixture(scope="module")
def data():
    x = {name: fn(1100, 64, seed=3) for name, fn in DATASETS.items()}
    return {name: (v[:1000], v[1000:]) for name, v in x.items()}


@pytest.mark.parametrize("kind,quant", CONFIGS)
def test_k_as_large_as_the_index_returns_every_row(data, kind, quant):
    """Annoy's stored search_k (sized for k = 10) capped a k = 1000 search at the rows its
    candidate budget reached, with no sign of it; Spotify Annoy's trees × k finds them all."""
    x, q = data["clustered"]
    params = {"annoy": {"n_trees": 10, "search_k": 200}}.get(kind, PARAMS[kind])
    ix = build_index(x, kind=kind, quant=quant, **params)
    _, ids = ix.search(q[:3], len(x))
    assert all(sorted(row.tolist()) == list(range(len(x))) for row in ids)


@pytest.mark.parametrize("kind,quant", CONFIGS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_recall_and_round_trip(tmp_path, data, kind, quant, dataset):
    x, q = data[dataset]
    meta = IndexMeta(model_sha256="ab" * 32, task="document", model_path="/m.gguf")
    ix = build_index(x, ids=np.arange(1000) * 7, kind=kind, quant=quant, meta=meta, **PARAMS[kind])
    scores, ids = ix.search(q, 10)
    truth = exact_topk(x, q, 10)
    assert recall(ids // 7, truth) >= FLOOR[(kind, quant)]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    path = tmp_path / "ix"
    ix.save(path)
    back = load_index(path)
    assert type(back) is type(ix) and back.quant == quant and back.count == 1000
    assert back.meta.model_sha256 == "ab" * 32 and back.meta.task == "document"
    s2, i2 = back.search(q, 10)
    np.testing.assert_array_equal(i2, ids)
    np.testing.assert_allclose(s2, scores, rtol=1e-5, atol=1e-6)
    # single search agrees with batch search
    s1, i1 = back.search_one(q[3], 10)
    np.testing.assert_array_equal(i1, ids[3])


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_string_ids_and_columns(tmp_path, kind):
    x = clustered(300, 32, seed=5)
    names = [f"doc-{i}-é" for i in range(300)]
    ix = (
        Builder(kind, **PARAMS[kind])
        .add(x[:150], names[:150], {"title": names[:150]})
        .add(x[150:], names[150:], {"title": names[150:]})
        .build()
    )
    ix.save(tmp_path / "s")
    back = load_index(tmp_path / "s")
    scores, ids = back.search(x[[7, 200]], 3)
    assert ids[0, 0] == "doc-7-é" and ids[1, 0] == "doc-200-é"
    assert back.columns["title"][200] == "doc-200-é"
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_dim_mismatch_raises(kind):
    ix = build_index(clustered(200, 64), kind=kind, dim=32, **PARAMS[kind])
    ix.search(np.ones((1, 32), np.float32), 5)
    ix.search(np.ones((2, 64), np.float32), 5)  # full width: Matryoshka-truncated
    for bad in (np.ones((1, 48), np.float32), np.ones((1, 16), np.float32)):
        with pytest.raises(DimensionMismatchError, match="32"):
            ix.search(bad, 5)


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_matryoshka_truncation_matches_exact_search_at_that_dim(kind):
    x = clustered(600, 128, seed=9)
    q = clustered(40, 128, seed=10)
    ix = build_index(x, kind=kind, dim=64, **PARAMS[kind])
    assert ix.dim == 64 and ix.meta.source_dim == 128
    _, ids = ix.search(q, 10)  # 128-d queries truncated + re-normalized inside
    truth = exact_topk(truncate_normalize(x, 64), truncate_normalize(q, 64), 10)
    assert recall(ids, truth) >= 0.95
    full_truth = exact_topk(x, q, 10)
    assert recall(ids, full_truth) < 1.0  # truncation really changed the geometry


def test_k_larger_than_index_pads():
    ix = build_index(clustered(5, 16), kind="brute")
    scores, ids = ix.search(clustered(2, 16, seed=1), 8)
    assert ids.shape == (2, 8) and (ids[:, 5:] == -1).all() and np.isinf(scores[:, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_builder_rejects_unknown_type_and_quant():
    with pytest.raises(ValueError, match="unknown index type"):
        Builder("kdtree")
    with pytest.raises(ValueError, match="annoy indexes support"):
        Builder("annoy", quant="int8")


@pytest.mark.parametrize(
    "kind,build,search,match",
    [
        ("annoy", {"n_trees": 0}, None, "n_trees must be at least 1, got 0"),
        ("annoy", None, {"search_k": 0}, "search_k must be at least 1 or -1, got 0"),
        ("hnsw", {"m": 1}, None, "m must be at least 2, got 1"),
        ("hnsw", {"ef_construction": 0}, None, "ef_construction must be at least 1, got 0"),
        ("hnsw", None, {"ef_search": -5}, "ef_search must be at least 1, got -5"),
        ("hnsw", {"m": 5000}, None, "m must be at most 4096, got 5000"),  # built, then refused at load
    ],
)
def test_knobs_outside_their_declared_bounds_are_refused(kind, build, search, match):
    """ef_construction 0 once sized the builder's native scratch to nothing (heap corruption);
    the others gave an empty index, an empty result or a degenerate graph without a word."""
    if build is not None:
        with pytest.raises(ValueError, match=match):
            build_index(clustered(50, 16), kind=kind, **build)
    else:
        ix = build_index(clustered(50, 16), kind=kind, **PARAMS[kind])
        with pytest.raises(ValueError, match=match):
            ix.search(clustered(2, 16, seed=1), 3, **search)
    if kind == "annoy" and search is not None:  # -1 is Annoy's "trees × k", not a count
        build_index(clustered(50, 16), kind=kind, **PARAMS[kind]).search(clustered(2, 16, seed=1), 3, search_k=-1)


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_a_query_holding_nan_or_infinity_is_an_error_and_no_queries_no_rows(kind):
    """NaN queries scored every row -inf (brute, annoy) or were blamed on the file (hnsw)."""
    ix = build_index(clustered(60, 16), kind=kind, **PARAMS[kind])
    q = clustered(3, 16, seed=2)
    q[2, 5] = np.nan
    with pytest.raises(ValueError, match="query vector 2 holds NaN or infinity"):
        ix.search(q, 3)
    q[2, 5] = np.inf
    with pytest.raises(ValueError, match="query vector 2 holds NaN or infinity"):
        ix.search(q, 3)
    scores, ids = ix.search(np.zeros((0, 16), np.float32), 3)  # brute used to fail to concatenate
    assert scores.shape == (0, 3) and len(ids) == 0
    q[2] = 0  # no direction: every row would score 0, in an arbitrary order
    with pytest.raises(ValueError, match="query vector 2 is all zeros"):
        ix.search(q, 3)


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_a_vector_holding_nan_is_refused_at_build_and_an_empty_index_has_no_hits(kind):
    """NaN rows were stored (and hnsw later blamed the file); an empty annoy index said a tree
    node was corrupt."""
    x = clustered(40, 16)
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match="vector 7 holds NaN or infinity"):
        build_index(x, kind=kind)
    b = Builder(kind).add(clustered(5, 16))
    with pytest.raises(ValueError, match="vector 12 holds NaN or infinity"):  # counted across adds
        b.add(x[:10])
    if kind == "annoy":  # its file could not be read back (see the next test)
        return
    empty = build_index(np.zeros((0, 16), np.float32), kind=kind)
    scores, ids = empty.search_rows(clustered(2, 16, seed=3), 4)
    assert (scores == -np.inf).all() and (ids == -1).all() and scores.shape == (2, 4)


@pytest.mark.parametrize("n", [0, 1])
def test_an_annoy_index_of_fewer_than_two_vectors_is_refused_before_it_is_written(n, tmp_path):
    """Its saved file had every node look like a root, and loading it failed."""
    with pytest.raises(ValueError, match=f"at least 2 vectors, got {n}"):
        build_index(clustered(2, 16)[:n], kind="annoy")
    build_index(clustered(2, 16), kind="annoy").save(tmp_path / "two.ann")  # two load back fine
    assert load_index(tmp_path / "two.ann").count == 2


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_every_knob_the_api_accepts_fits_the_file(kind):
    """What a build takes, its file can hold: a knob's bounds lie within the header schema's."""
    from embedpipe.indexes.format import PARAMS_SCHEMA

    schema = PARAMS_SCHEMA[kind]
    for p in (*INDEX_TYPES[kind].build_params, *INDEX_TYPES[kind].search_params):
        field = schema.get(p.name)
        if field is None or p.type is not int:
            continue
        assert field.lo is None or (p.minimum is not None and p.minimum >= field.lo), (kind, p.name)
        assert field.hi is None or (p.maximum is not None and p.maximum <= field.hi), (kind, p.name)


@pytest.mark.parametrize("kind", list(INDEX_TYPES))
def test_parameters_are_declared_and_checked(kind):
    """build and search take exactly the declared knobs: a typo is an error, not ignored."""
    cls = INDEX_TYPES[kind]
    with pytest.raises(ValueError, match=f"{kind} indexes have no build parameter ef"):
        Builder(kind, ef=32)
    with pytest.raises(ValueError, match="no build parameter typo"):
        cls.build(clustered(10, 16), None, IndexMeta(), typo=1)
    ix = build_index(clustered(50, 16), kind=kind, **PARAMS[kind])
    with pytest.raises(ValueError, match="no search parameter ef"):
        ix.search(clustered(2, 16, seed=1), 3, ef=16)
    for p in cls.search_params:  # every declared knob is a public call argument
        assert ix.search(clustered(2, 16, seed=1), 3, **{p.name: p.default})[1].shape == (2, 3)
    if cls.build_params:
        p = cls.build_params[0]
        with pytest.raises(ValueError, match=p.name):
            Builder(kind, **{p.name: "x" if p.type is not str else 3})


def test_normalize_rows_in_blocks_equals_the_whole_array_norm(monkeypatch):
    from embedpipe.indexes import base

    x = np.random.default_rng(3).standard_normal((1000, 37)).astype(np.float32)
    x[5] = 0.0  # all-zero rows stay zero
    whole = x / np.where(np.linalg.norm(x, axis=1, keepdims=True) > 0, np.linalg.norm(x, axis=1, keepdims=True), 1)
    monkeypatch.setattr(base, "NORM_BLOCK", 64)  # ragged last block
    got = base.normalize_rows(x)
    np.testing.assert_array_equal(got, whole)
    assert got is not x and not got[5].any()
