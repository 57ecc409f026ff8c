"""The ASGI application: routes, auth, body limits, disconnects, metrics and the access log.

Every route goes through `_endpoint`, which turns any failure into an OpenAI-style error body,
counts the request in /metrics and writes one JSON access-log line. Models and indexes load on
a thread after the server is listening: /health answers at once, /ready and the /v1 routes say
503 until everything is loaded and warmed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.serve.catalog import Catalog, ServedModel
from embedpipe.serve.config import ServeConfig
from embedpipe.serve.embeddings import Embedded, EmbeddingService
from embedpipe.serve.errors import APIError
from embedpipe.serve.metrics import Metrics
from embedpipe.serve.schemas import (
    check_body_size,
    parse_embedding_request,
    parse_json,
    parse_search_request,
    too_large,
)
from embedpipe.serve.search import SearchService

log = logging.getLogger(__name__)
access_log = logging.getLogger("embedpipe.serve.access")

CLIENT_GONE = 499  # status recorded (never sent) for a request whose client disconnected


class FastJSONResponse(JSONResponse):
    """orjson renders numpy float32 rows directly (shortest float32 text, no Python float per
    element), so a large float response does not hold the event loop for seconds."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class ServerState:
    """Everything one app instance owns; `app.state.server` in handlers."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.cache = (
            EmbeddingCache.in_dir(cfg.cache_dir, cfg.cache_max_bytes, cfg.cache_memory_bytes) if cfg.cache else None
        )
        self.metrics.watch_cache(self.cache)
        self.catalog = Catalog(cfg, self.metrics.pass_observer)
        self.embeddings = EmbeddingService(cfg.long, self.cache, self.metrics)
        self.search = SearchService(self.embeddings)
        self.ready = False
        self.load_error: str | None = None
        self.accepted = 0
        self.completed = 0
        self.on_fatal: Callable[[], None] = lambda: None  # the runner makes this stop the server
        self._loader: asyncio.Task | None = None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()

        def loaded(model: ServedModel) -> None:
            self.metrics.model_load_seconds.labels(model.name).set(model.load_seconds)
            self.metrics.watch_queue(model.name, lambda b=model.aemb.batcher: (b.queued_requests, b.queued_tokens))

        try:
            await loop.run_in_executor(None, self.catalog.load_all, loaded)
        except Exception as exc:  # noqa: BLE001 - whatever fails, stop; never stay "loading"
            # A bad file or argument is the user's one-line error; anything else is a bug,
            # logged with its traceback.
            expected = isinstance(exc, (EmbedpipeError, OSError, ValueError))
            self.load_error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            log.error("loading failed, stopping: %s", self.load_error, exc_info=not expected)
            self.on_fatal()
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: models %s, indexes %s",
            ", ".join(self.catalog.models) or "-",
            ", ".join(self.catalog.indexes) or "-",
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loader = asyncio.create_task(self.load())
        try:
            yield
        finally:
            if not self._loader.done():
                await self._loader  # a model half-loaded on a thread cannot be interrupted
            await self.catalog.aclose()
            self.search.close()
            if self.cache is not None:
                self.cache.close()
            log.info("stopped: %d requests accepted, %d answered", self.accepted, self.completed)


def create_app(cfg: ServeConfig) -> Starlette:
    """The Starlette app for `cfg` (validated here); models load when the app starts."""
    state = ServerState(cfg.validate())
    routes = [
        Route("/health", _endpoint(state, "health", _health, protected=False), methods=["GET"]),
        Route("/ready", _endpoint(state, "ready", _ready, protected=False), methods=["GET"]),
        Route("/metrics", _endpoint(state, "metrics", _metrics, protected=False), methods=["GET"]),
        Route("/v1/models", _endpoint(state, "models", _models), methods=["GET"]),
        Route("/v1/models/{model_id}", _endpoint(state, "models", _model), methods=["GET"]),
        Route("/v1/embeddings", _endpoint(state, "embeddings", _embeddings), methods=["POST"]),
        Route("/v1/search", _endpoint(state, "search", _search), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=state.lifespan, exception_handlers={HTTPException: _http_exception})
    app.state.server = state
    return app


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 as OpenAI-style errors."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code).response()


Handler = Callable[[ServerState, Request, dict], Awaitable[Response]]


def _endpoint(state: ServerState, name: str, handler: Handler, protected: bool = True):
    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        state.accepted += 1
        info: dict[str, Any] = {}
        try:
            if protected:
                _check_auth(state, request)
            response = await handler(state, request, info)
        except APIError as exc:
            response = exc.response()
        except (ClientGone, ClientDisconnect):
            response = Response(status_code=CLIENT_GONE)
        except asyncio.CancelledError:
            # uvicorn cancels what --shutdown-timeout did not let finish: answer in the API's
            # format (its own fallback is a text/plain 500) and count it, then let the task end
            response = APIError(
                503,
                "the server is shutting down and could not finish this request within --shutdown-timeout; retry",
                "shutting_down",
                headers={"Retry-After": "1", "Connection": "close"},
            ).response()
        except Exception:  # noqa: BLE001 - a bug must still answer in the API's error format
            log.exception("internal error on %s %s", request.method, request.url.path)
            response = APIError(500, "internal server error (logged on the server)", "internal_error").response()
        seconds = time.perf_counter() - t0
        state.metrics.observe_request(name, response.status_code, seconds)
        if state.cfg.access_log:
            client = request.client
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": request.method,
                        "path": request.url.path,
                        "status": response.status_code,
                        "ms": round(1e3 * seconds, 2),
                        "client": f"{client.host}:{client.port}" if client else None,
                        **info,
                    }
                )
            )
        state.completed += 1
        return response

    return endpoint


def _check_auth(state: ServerState, request: Request) -> None:
    if state.cfg.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not state.cfg.key_matches(token.strip()):
        raise APIError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _require_ready(state: ServerState) -> None:
    if not state.ready:
        raise APIError(
            503, "the server is still loading its models; poll GET /ready", "not_ready", headers={"Retry-After": "1"}
        )


async def _read_body(state: ServerState, request: Request) -> bytes:
    limit = state.cfg.max_request_bytes
    check_body_size(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (and its queued model work) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


# --- routes ------------------------------------------------------------------------------------
async def _health(state: ServerState, request: Request, info: dict) -> Response:
    return JSONResponse({"status": "ok"})


async def _ready(state: ServerState, request: Request, info: dict) -> Response:
    if state.ready:
        return JSONResponse(
            {"status": "ready", "models": list(state.catalog.models), "indexes": list(state.catalog.indexes)}
        )
    status = "failed" if state.load_error else "loading"
    return JSONResponse({"status": status, "error": state.load_error}, status_code=503)


async def _metrics(state: ServerState, request: Request, info: dict) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _models(state: ServerState, request: Request, info: dict) -> Response:
    _require_ready(state)
    cat = state.catalog
    return JSONResponse(
        {
            "object": "list",
            "data": [m.describe(state.cfg.default_task) for m in cat.models.values()],
            "indexes": [i.describe() for i in cat.indexes.values()],
        }
    )


async def _model(state: ServerState, request: Request, info: dict) -> Response:
    """One model (OpenAI's `models.retrieve`); a task alias (`name:query`) is that model."""
    _require_ready(state)
    model_id = request.path_params["model_id"]
    served, _ = state.catalog.resolve(model_id or None)
    return JSONResponse({**served.describe(state.cfg.default_task), "id": model_id})


def _encode_vector(vec: np.ndarray, fmt: str) -> np.ndarray | str:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, "<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vec, np.float32)


async def _embeddings(state: ServerState, request: Request, info: dict) -> Response:
    _require_ready(state)
    req = parse_embedding_request(parse_json(await _read_body(state, request)), state.cfg.max_client_batch)
    served, alias_task = state.catalog.resolve(req.model)
    info.update(model=served.name, inputs=req.count)
    service = state.embeddings
    if req.texts is not None:
        task = req.task or alias_task or state.cfg.default_task
        work = service.embed_texts(served, req.texts, task, req.titles, req.dimensions)
    else:
        work = service.embed_ids(served, req.token_ids, req.dimensions)
    out: Embedded = await _unless_disconnected(request, work)
    info.update(tokens=out.tokens, truncated=out.truncated, cache_hits=out.cache_hits)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
        for i, v in enumerate(out.vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": req.model or served.name,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    }
    return FastJSONResponse(body, headers=_embedded_headers(out))


def _embedded_headers(out: Embedded) -> dict[str, str]:
    """How the texts of a request were embedded: inputs cut to the context, served from the cache."""
    return {"x-embedpipe-truncated": str(out.truncated), "x-embedpipe-cache-hits": str(out.cache_hits)}


async def _search(state: ServerState, request: Request, info: dict) -> Response:
    _require_ready(state)
    req = parse_search_request(parse_json(await _read_body(state, request)), state.cfg.max_client_batch)
    served = state.catalog.index(req.index)
    info.update(index=served.name, inputs=len(req.queries))
    results, out = await _unless_disconnected(request, state.search.search(served, req))
    tokens = out.tokens
    info.update(tokens=tokens, truncated=out.truncated, cache_hits=out.cache_hits)
    return FastJSONResponse(
        {
            "object": "list",
            "index": served.name,
            "model": served.model.name,
            "k": req.k,
            "data": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=_embedded_headers(out),
    )
