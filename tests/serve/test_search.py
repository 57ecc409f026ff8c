"""/v1/search: the query embedded with the index's model and prompt, the index's ids and columns."""

from __future__ import annotations

import httpx
import pytest

from embedpipe.indexes import Builder, IndexMeta, load_index
from embedpipe.indexes.query import search_texts
from embedpipe.serve.config import IndexSpec, ServeConfig

from .conftest import LiveServer

DOCS = [
    f"{w} document number {i}"
    for i, w in enumerate(
        "bread flour water salt yeast vector index parquet stream fox dog lazy quick brown".split() * 3
    )
]


@pytest.fixture(scope="module")
def search_server(wide_model, wide_emb, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    vecs = wide_emb.encode(DOCS, task="document")
    meta = lambda: IndexMeta(model_sha256=wide_emb.model_sha256, model_path=str(wide_model), task="document")  # noqa: E731
    ids = [f"doc-{i}" for i in range(len(DOCS))]
    Builder("brute", meta=meta()).add(vecs, ids, {"text": DOCS}).build().save(root / "brute.idx")
    Builder("hnsw", meta=meta(), m=8, ef_construction=40).add(vecs, ids, {"text": DOCS}).build().save(root / "hnsw.idx")
    cfg = ServeConfig(
        models=[],
        indexes=[IndexSpec("docs", str(root / "brute.idx")), IndexSpec("graph", str(root / "hnsw.idx"))],
        backend="auto",
        cache_dir=str(root / "cache"),
        access_log=False,
    )
    live = LiveServer(cfg)
    yield live, root
    live.stop()


def test_search_matches_the_library(search_server, wide_emb):
    live, root = search_server
    queries = ["bread and flour", "a lazy dog"]
    resp = httpx.post(live.url + "/v1/search", json={"index": "docs", "queries": queries, "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    want = search_texts(load_index(root / "brute.idx"), wide_emb, queries, 5)
    for got, ref in zip(body["data"], want):
        assert got["query"] == ref["query"]
        assert [h["id"] for h in got["results"]] == [h["id"] for h in ref["results"]]
        assert [h["text"] for h in got["results"]] == [h["text"] for h in ref["results"]]
        assert [round(h["score"], 4) for h in got["results"]] == [round(h["score"], 4) for h in ref["results"]]
    assert body["usage"]["prompt_tokens"] > 0
    models = httpx.get(live.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-wide-f32"]  # the index's model, loaded with it
    assert models["data"][0]["prompt_convention"] == wide_emb.prompts
    assert "none" not in models["data"][0]["prompted_tasks"]
    assert {i["id"]: i["type"] for i in models["indexes"]} == {"docs": "brute", "graph": "hnsw"}


def test_truncation_and_cache_hits_are_counted_in_headers_as_for_embeddings(search_server):
    live, _ = search_server
    body = {"index": "docs", "queries": [" ".join(["bread flour water"] * 80), "a query only this test sends"]}
    first = httpx.post(live.url + "/v1/search", json=body)
    second = httpx.post(live.url + "/v1/search", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["x-embedpipe-truncated"] == "1" and first.headers["x-embedpipe-cache-hits"] == "0"
    assert second.headers["x-embedpipe-cache-hits"] == "2" and second.json()["data"] == first.json()["data"]


def test_single_query_and_knobs(search_server):
    live, _ = search_server
    resp = httpx.post(live.url + "/v1/search", json={"index": "graph", "query": "yeast", "k": 3, "ef_search": 64})
    assert resp.status_code == 200 and len(resp.json()["data"][0]["results"]) == 3
    named = {"index": "graph", "query": "yeast", "k": 3, "ef_search": 64, "model": resp.json()["model"]}
    assert httpx.post(live.url + "/v1/search", json=named).json()["data"] == resp.json()["data"]
    bad = httpx.post(live.url + "/v1/search", json={"index": "docs", "query": "yeast", "ef_search": 64})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ef_search"
    for body, param in [
        ({"index": "docs"}, "query"),
        ({"index": "docs", "query": "a", "queries": ["b"]}, "query"),
        ({"index": "docs", "query": "a", "k": 0}, "k"),
        ({"index": "docs", "queries": []}, "queries"),
        ({"query": "a"}, "index"),
        ({"index": "graph", "query": "a", "ef_search": 10**9}, "ef_search"),
        ({"index": "graph", "query": "a", "ef_serach": 64}, "ef_serach"),
        ({"index": "docs", "query": "a", "dimensions": 16}, "dimensions"),
        ({"index": "docs", "query": "a", "model": "another-model"}, "model"),
        ({"index": "docs", "query": "a", "model": 3}, "model"),
    ]:
        resp = httpx.post(live.url + "/v1/search", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (body, resp.text)


def test_two_indexes_of_one_name_are_refused_at_load(search_server):
    from embedpipe.errors import EmbedpipeError
    from embedpipe.serve.catalog import Catalog

    _, root = search_server
    specs = [IndexSpec.parse(str(root / "brute.idx")), IndexSpec.parse(f"brute={root / 'hnsw.idx'}")]
    assert [s.name for s in specs] == ["brute", "brute"]  # a bare path is named by its file
    cfg = ServeConfig(models=[], indexes=specs, warmup=False, access_log=False)
    with pytest.raises(EmbedpipeError, match="two indexes are named 'brute'"):
        Catalog(cfg, lambda name: lambda stats: None).load_all()
