"""The real EmbeddingGemma Q8_0 behind the server: the openai client gets Embedder.encode's vectors."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from embedpipe.runtime.embedder import Embedder
from embedpipe.serve.config import ModelSpec, ServeConfig

from .conftest import LiveServer
from .test_embeddings import assert_same

pytestmark = pytest.mark.model

TEXTS = [
    "How do I reset the router password at home?",
    "Best way to store fresh basil for a week",
    "The new water treatment plant opened on Monday after three years of construction and delays.",
]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from embedpipe.runtime.store import ensure_model

    path = ensure_model("q8_0")
    live = LiveServer(ServeConfig(models=[ModelSpec("gemma", str(path))], cache=False, access_log=False))
    yield live, Embedder.load(path)
    live.stop()


def test_openai_client_gets_encode_vectors(real):
    live, emb = real
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(model="gemma", input=TEXTS)  # base64 on the wire
    assert_same([d.embedding for d in got.data], emb.encode(TEXTS, task="query"))
    docs = client.embeddings.create(model="gemma:document", input=TEXTS, dimensions=256, encoding_format="float")
    assert_same([d.embedding for d in docs.data], emb.encode(TEXTS, task="document", dim=256))
    assert len(docs.data[0].embedding) == 256
    ids = emb.tokenize(TEXTS[:1], task="query")
    by_ids = client.embeddings.create(model="gemma", input=ids[0], encoding_format="float")
    assert_same([by_ids.data[0].embedding], emb.encode(TEXTS[:1], task="query"))
    assert by_ids.usage.prompt_tokens == len(ids[0])
    single = client.embeddings.create(model="gemma", input=TEXTS[1], dimensions=128)
    assert_same([single.data[0].embedding], emb.encode(TEXTS[1:2], task="query", dim=128))
    assert np.isclose(np.linalg.norm(single.data[0].embedding), 1.0, atol=1e-5)
