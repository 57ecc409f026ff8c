"""Auth, body limits and bad requests: OpenAI-style error bodies that name the field."""

from __future__ import annotations

import httpx
import pytest

from .conftest import LiveServer, make_config

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def strict(wide_model, tmp_path_factory):
    cfg = make_config(
        wide_model,
        tmp_path_factory.mktemp("strict"),
        api_key=KEY,
        max_request_bytes=4096,
        max_client_batch=8,
        long="error",
    )
    live = LiveServer(cfg)
    yield live
    live.stop()


def post(server, body=None, key=KEY, path="/v1/embeddings", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, **kw)


def error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_api_key(strict):
    assert post(strict, {"input": "hi"}).status_code == 200
    assert error(post(strict, {"input": "hi"}, key=None), 401)["code"] == "invalid_api_key"
    error(post(strict, {"input": "hi"}, key="s3cret-kex"), 401)
    error(httpx.get(strict.url + "/v1/models"), 401)
    for open_path in ("/health", "/ready", "/metrics"):
        assert httpx.get(strict.url + open_path).status_code == 200


def test_request_too_large(strict):
    err = error(post(strict, {"input": ["word " * 500] * 2}), 413)
    assert "4096" in err["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"input": ["'
        for _ in range(100):
            yield b"word " * 20
        yield b'"]}'

    resp = httpx.post(strict.url + "/v1/embeddings", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    error(resp, 413)


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"input": ["a"] * 9}, "input", "too_many_inputs"),
        ({"input": []}, "input", "empty_input"),
        ({"input": ""}, "input", "empty_input"),
        ({"input": ["ok", ""]}, "input", "empty_input"),
        ({"input": [[]]}, "input", "empty_input"),
        ({"input": [1, "a"]}, "input", None),
        ({"input": [[1, 2], [3, True]]}, "input", None),
        ({"input": [10**9]}, "input", "invalid_token_id"),
        ({}, "input", "missing_field"),
        ({"input": "a", "dimensions": 0}, "dimensions", None),
        ({"input": "a", "dimensions": 100}, "dimensions", None),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", None),
        ({"input": "a", "encoding_format": False}, "encoding_format", None),
        ({"input": "a", "encoding_format": ""}, "encoding_format", None),
        ({"input": "a", "encoding_format": []}, "encoding_format", None),
        ({"input": "a", "task": "poetry"}, "task", None),
        ({"input": "a", "model": "tiny:poetry"}, "model", None),
        ({"input": ["a", "b"], "titles": ["x"], "task": "document"}, "titles", None),
        ({"input": "a", "title": "x"}, "titles", None),
    ],
)
def test_bad_embedding_requests(strict, body, param, code):
    err = error(post(strict, body), 400, param)
    if code:
        assert err["code"] == code


@pytest.mark.parametrize(
    "element, kind", [(1.5, "a number that is not an integer"), ({"t": 1}, "an object"), (None, "null")]
)
def test_an_input_of_another_json_kind_is_named(strict, element, kind):
    """Not 'mixes types': the message names what was sent."""
    err = error(post(strict, {"input": [element]}), 400, "input")
    assert err["message"] == f"'input' holds {kind}: send strings or integer token ids"
    assert "mixes types" in error(post(strict, {"input": ["a", 1]}), 400, "input")["message"]


def test_bad_bodies(strict):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = strict.url + "/v1/embeddings"
    assert error(httpx.post(url, content=b'{"input": "\xff\xfe"}', headers=headers), 400)["code"] == "invalid_utf8"
    assert (
        error(httpx.post(url, content=b'{"input": "\\ud800"}', headers=headers), 400, "input")["code"] == "invalid_utf8"
    )
    assert error(httpx.post(url, content=b'{"input": ', headers=headers), 400)["code"] == "invalid_json"
    assert error(httpx.post(url, content=b'["input"]', headers=headers), 400)["code"] == "invalid_body"


def test_unknown_model_and_index(strict):
    err = error(post(strict, {"input": "a", "model": "gpt-4"}), 404, "model")
    assert "tiny" in err["message"]
    error(post(strict, {"index": "nope", "query": "a"}, path="/v1/search"), 404, "index")
    error(httpx.get(strict.url + "/v2/whatever"), 404)


def test_long_input_is_an_error_with_long_error(strict, wide_emb):
    long = " ".join(["bread flour water"] * 80)
    err = error(post(strict, {"input": ["fine", long]}), 400, "input")
    assert err["code"] == "input_too_long" and "input[1]" in err["message"]
    ids = wide_emb.tokenize([long], task="query", truncate=True)[0] * 2
    error(post(strict, {"input": [ids]}), 400, "input")


def test_errors_are_counted_by_status(strict):
    post(strict, {"input": []})
    assert strict.metric("embedpipe_requests_total", endpoint="embeddings", status="400") >= 1
    assert strict.metric("embedpipe_requests_total", endpoint="embeddings", status="500") == 0


def test_titles_for_a_model_whose_prompts_take_none_are_a_400(tmp_path):
    """A BERT-family model has no title field: that is the client's mistake, not a 500."""
    from embedpipe.runtime.convert import convert_checkout
    from tests.runtime.bert_checkout_builder import build_bert_checkout

    bert = convert_checkout(build_bert_checkout(tmp_path / "bert"), tmp_path / "bert-f32.gguf", "f32")
    live = LiveServer(make_config(bert, tmp_path))
    try:
        for body in ({"input": "a", "task": "document", "title": "T"}, {"input": ["a"], "titles": ["T"]}):
            err = error(post(live, {**body, "task": "document"}, key=None), 400, "titles")
            assert "takes no titles" in err["message"]
        assert post(live, {"input": ["a"], "task": "document", "titles": [None]}, key=None).status_code == 200
    finally:
        live.stop()
