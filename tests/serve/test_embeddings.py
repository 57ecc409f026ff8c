"""/v1/embeddings through the official openai client: the vectors Embedder.encode gives."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

COS = 0.99999
TEXTS = ["the quick brown fox", "bread needs flour water salt and yeast", "vector indexes", "x"]


def assert_same(got, want) -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= COS, cos


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def vectors(resp) -> np.ndarray:
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.array([d.embedding for d in resp.data], np.float32)


def test_string_and_list(client, wide_emb):
    one = client.embeddings.create(model="tiny", input=TEXTS[0], encoding_format="float")
    assert_same(vectors(one), wide_emb.encode(TEXTS[:1], task="query"))
    many = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert_same(vectors(many), wide_emb.encode(TEXTS, task="query"))
    want_tokens = sum(len(s) for s in wide_emb.tokenize(TEXTS, task="query"))
    assert many.usage.prompt_tokens == many.usage.total_tokens == want_tokens


def test_base64_default_of_the_client(client, wide_emb):
    resp = client.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64 and decodes it
    assert_same(vectors(resp), wide_emb.encode(TEXTS, task="query"))


def test_base64_is_little_endian_float32(server, wide_emb):
    body = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS[1], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), "<f4")
    assert_same(vec[None], wide_emb.encode(TEXTS[1:2], task="query"))


def test_token_ids(client, wide_emb):
    ids = wide_emb.tokenize(TEXTS, task="document")
    single = client.embeddings.create(model="tiny", input=ids[0], encoding_format="float")
    assert_same(vectors(single), wide_emb.encode_ids(ids[:1]))
    batch = client.embeddings.create(model="tiny", input=ids, encoding_format="float")
    assert_same(vectors(batch), wide_emb.encode(TEXTS, task="document"))
    assert batch.usage.prompt_tokens == sum(len(s) for s in ids)


def test_dimensions(client, wide_emb):
    resp = client.embeddings.create(model="tiny", input=TEXTS, dimensions=128, encoding_format="float")
    assert_same(vectors(resp), wide_emb.encode(TEXTS, task="query", dim=128))
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input=TEXTS, dimensions=100)
    assert "128" in str(info.value) and "256" in str(info.value)


def test_tasks_titles_and_aliases(client, server, wide_emb):
    doc = client.embeddings.create(model="tiny:document", input=TEXTS, encoding_format="float")
    assert_same(vectors(doc), wide_emb.encode(TEXTS, task="document"))
    titled = client.embeddings.create(
        model="tiny", input=TEXTS[:2], encoding_format="float", extra_body={"task": "document", "titles": ["Fox", None]}
    )
    assert_same(vectors(titled), wide_emb.encode(TEXTS[:2], task="document", titles=["Fox", None]))
    clus = client.embeddings.create(
        model="tiny", input=TEXTS, encoding_format="float", extra_body={"task": "clustering"}
    )
    assert_same(vectors(clus), wide_emb.encode(TEXTS, task="clustering"))
    models = client.models.list()
    entry = next(m for m in models.data if m.id == "tiny")
    assert entry.default_task == "query" and entry.dimensions == [256, 128]
    assert client.models.retrieve("tiny").dimensions == [256, 128]
    assert client.models.retrieve("tiny:document").id == "tiny:document"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_repeated_texts_come_from_the_cache(server, wide_emb):
    texts = ["a text only this test sends", "and a second one"]
    first = httpx.post(server.url + "/v1/embeddings", json={"input": texts})
    second = httpx.post(server.url + "/v1/embeddings", json={"input": texts})
    assert first.headers["x-embedpipe-cache-hits"] == "0" and second.headers["x-embedpipe-cache-hits"] == "2"
    assert first.json()["data"] == second.json()["data"]
    assert first.json()["usage"] == second.json()["usage"]
    assert server.metric("embedpipe_cache_hits_total") >= 2


def test_truncation_is_counted_in_a_header(server, wide_emb):
    long = " ".join(["bread flour water"] * 80)
    resp = httpx.post(server.url + "/v1/embeddings", json={"input": [long, "short"], "encoding_format": "float"})
    assert resp.status_code == 200 and resp.headers["x-embedpipe-truncated"] == "1"
    got = np.array([d["embedding"] for d in resp.json()["data"]], np.float32)
    assert_same(got, wide_emb.encode([long, "short"], task="query", truncate=True))
    assert resp.json()["usage"]["prompt_tokens"] == 96 + len(wide_emb.tokenize(["short"], task="query")[0])
    assert server.metric("embedpipe_truncated_inputs_total") >= 1


def test_langchain_openai_embeddings(server, wide_emb):
    """LangChain's OpenAIEmbeddings as its docs configure it for OpenAI-compatible servers:
    `check_embedding_ctx_length=False` sends the strings (its default re-tokenizes with tiktoken)."""
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(
        model="tiny:document",
        base_url=server.url + "/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
        chunk_size=2,
        max_retries=0,
    )
    assert_same(lc.embed_documents(TEXTS), wide_emb.encode(TEXTS, task="document"))
    query = OpenAIEmbeddings(
        model="tiny:query", base_url=server.url + "/v1", api_key="unused", check_embedding_ctx_length=False
    )
    assert_same([query.embed_query(TEXTS[1])], wide_emb.encode(TEXTS[1:2], task="query"))
