"""Request bodies of /v1/embeddings and /v1/search, validated into dataclasses.

Every rejection is a 400 that names the field (`param`) and says what would be accepted.
/v1/embeddings ignores fields it does not know (OpenAI's `user`, LangChain extras), as OpenAI
clients expect; /v1/search is our own API and refuses them, so a misspelt knob or a `dimensions`
it cannot honour is never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from embedpipe.serve.errors import APIError, bad_request

ENCODING_FORMATS: tuple[str, ...] = ("float", "base64")
MAX_K = 1000
MAX_KNOB = 100_000  # bounds ef_search / search_k: a beam wider than this only burns memory


def search_knobs() -> dict[str, type]:
    """Every search parameter some index type declares (hnsw ef_search, annoy search_k, …) and its type."""
    from embedpipe.indexes import INDEX_TYPES

    return {p.name: p.type for cls in INDEX_TYPES.values() for p in cls.search_params}


def parse_json(raw: bytes) -> Any:
    """The body as JSON; 400 for bytes that are not UTF-8 JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            code="invalid_json",
        ) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_body")
    return body


_JSON_KINDS = {bool: "a boolean", float: "a number that is not an integer", dict: "an object", type(None): "null"}


def _json_kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", name)
    return value


def _optional_int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise bad_request(f"'{name}' must be an integer {bound}, got {json.dumps(value)[:40]}", name)
    return value


def check_text(text: str, where: str, param: str) -> None:
    """Empty strings and lone surrogates (JSON "\\ud800" escapes) are not texts."""
    if not text:
        raise bad_request(f"{where} is an empty string; every input must contain text", param, "empty_input")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{where} is not valid Unicode (a lone surrogate escape)", param, "invalid_utf8") from None


@dataclass
class EmbeddingRequest:
    model: str | None
    texts: list[str] | None = None  # exactly one of texts / token_ids
    token_ids: list[list[int]] | None = None
    task: str | None = None
    titles: list[str | None] | None = None
    dimensions: int | None = None
    encoding_format: str = "float"

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids)


def parse_embedding_request(body: Any, max_inputs: int) -> EmbeddingRequest:
    body = _object(body)
    if "input" not in body:
        raise bad_request("'input' is required: a string, a list of strings, or token ids", "input", "missing_field")
    req = EmbeddingRequest(
        model=_optional_str(body, "model"),
        task=_optional_str(body, "task"),
        dimensions=_optional_int(body, "dimensions", 1),
    )
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in ENCODING_FORMATS:
        raise bad_request(
            f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, got {json.dumps(fmt)[:40]}",
            "encoding_format",
        )
    req.encoding_format = fmt
    _parse_input(body["input"], req, max_inputs)
    _parse_titles(body, req)
    return req


def _parse_input(value: Any, req: EmbeddingRequest, max_inputs: int) -> None:
    if isinstance(value, str):
        check_text(value, "'input'", "input")
        req.texts = [value]
        return
    if not isinstance(value, list):
        raise bad_request(
            "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists", "input"
        )
    if not value:
        raise bad_request("'input' is an empty list; send at least one input", "input", "empty_input")
    if all(_is_int(v) for v in value):
        req.token_ids = [value]
    elif all(isinstance(v, str) for v in value):
        for i, text in enumerate(value):
            check_text(text, f"input[{i}]", "input")
        req.texts = list(value)
    elif all(isinstance(v, list) for v in value):
        for i, seq in enumerate(value):
            if not seq:
                raise bad_request(f"input[{i}] is an empty token list", "input", "empty_input")
            if not all(_is_int(t) for t in seq):
                raise bad_request(f"input[{i}] must be a list of integer token ids", "input")
        req.token_ids = list(value)
    else:
        odd = [v for v in value if not (isinstance(v, (str, list)) or _is_int(v))]
        if odd:
            raise bad_request(f"'input' holds {_json_kind(odd[0])}: send strings or integer token ids", "input")
        raise bad_request("'input' mixes types: send all strings, or all token ids", "input")
    if req.count > max_inputs:
        raise bad_request(
            f"'input' has {req.count} items, more than this server takes per request "
            f"({max_inputs}, --max-client-batch); split the request",
            "input",
            "too_many_inputs",
        )


def _parse_titles(body: dict[str, Any], req: EmbeddingRequest) -> None:
    title, titles = body.get("title"), body.get("titles")
    if title is not None and titles is not None:
        raise bad_request("send 'title' or 'titles', not both", "titles")
    if title is not None:
        if not isinstance(title, str):
            raise bad_request("'title' must be a string", "title")
        req.titles = [title] * req.count
    elif titles is not None:
        if not isinstance(titles, list) or not all(t is None or isinstance(t, str) for t in titles):
            raise bad_request("'titles' must be a list of strings (or nulls)", "titles")
        if len(titles) != req.count:
            raise bad_request(f"'titles' has {len(titles)} items for {req.count} inputs", "titles")
        req.titles = list(titles)
    if req.titles is not None and req.token_ids is not None:
        raise bad_request("titles apply to text inputs, not token ids", "titles")


@dataclass
class SearchRequest:
    index: str
    queries: list[str]
    model: str | None = None  # if sent, must name the index's own model
    k: int = 10
    single: bool = False  # 'query' (one string) rather than 'queries' was sent
    knobs: dict[str, Any] = field(default_factory=dict)


SEARCH_FIELDS: tuple[str, ...] = ("index", "query", "queries", "k", "model")


def parse_search_request(body: Any, max_queries: int) -> SearchRequest:
    body = _object(body)
    known = (*SEARCH_FIELDS, *search_knobs())
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise bad_request(
            f"/v1/search does not take {', '.join(map(repr, unknown))}; its fields are {', '.join(known)}",
            unknown[0],
            "unknown_field",
        )
    index = body.get("index")
    if not isinstance(index, str) or not index:
        raise bad_request(
            "'index' is required: the name of a loaded index (GET /v1/models lists them)", "index", "missing_field"
        )
    query, queries = body.get("query"), body.get("queries")
    if (query is None) == (queries is None):
        raise bad_request(
            "send exactly one of 'query' (a string) or 'queries' (a list of strings)", "query", "missing_field"
        )
    if query is not None:
        if not isinstance(query, str):
            raise bad_request("'query' must be a string", "query")
        check_text(query, "'query'", "query")
        texts, single = [query], True
    else:
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            raise bad_request("'queries' must be a non-empty list of strings", "queries")
        for i, text in enumerate(queries):
            check_text(text, f"queries[{i}]", "queries")
        if len(queries) > max_queries:
            raise bad_request(
                f"'queries' has {len(queries)} items, more than {max_queries} (--max-client-batch)",
                "queries",
                "too_many_inputs",
            )
        texts, single = list(queries), False
    k = _optional_int(body, "k", 1, MAX_K)
    knobs = {}
    for name, kind in search_knobs().items():
        if body.get(name) is None:
            continue
        knobs[name] = _optional_int(body, name, -1, MAX_KNOB) if kind is int else body[name]
    return SearchRequest(index, texts, _optional_str(body, "model"), 10 if k is None else k, single, knobs)


def check_body_size(length_header: str | None, limit: int) -> None:
    """413 for a declared Content-Length over the limit (bodies without one are counted as read)."""
    if length_header is None:
        return
    try:
        length = int(length_header)
    except ValueError:
        raise APIError(400, "Content-Length is not a number", "invalid_header") from None
    if length > limit:
        raise too_large(limit)


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server accepts ({limit} bytes, --max-request-bytes); "
        "send fewer or shorter inputs per request",
        "request_too_large",
    )
