"""What a server has loaded: models (each behind its own AsyncEmbedder) and indexes.

A model is named by `--model NAME=PATH`, else by its registered name or its file name without
`.gguf` (`served_name`); a model served under its registered name answers to its file's name
too (`embeddinggemma-300m-q8_0`), unlisted. Clients pick a task with the alias `NAME:TASK`
(`NAME:query`, `NAME:document`, …) when they cannot send the `task` field. An index is served with the model its vectors came from (matched by SHA-256
among the `--model`s, else the path its header records).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.async_embedder import AsyncEmbedder
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.microbatch import PassStats
from embedpipe.runtime.prompts import TASKS, canonical_task
from embedpipe.runtime.prompts import scheme as prompt_scheme
from embedpipe.serve.config import ServeConfig
from embedpipe.serve.errors import APIError

log = logging.getLogger(__name__)

WARMUP_TEXTS = ["warm up the kernels", "a second, somewhat longer text to warm up the kernels once more"]


def preflight(cfg: ServeConfig) -> None:
    """What can be refused before the server starts (so the error is the first and only line,
    not a log line after uvicorn's start-up lines): each `--model` resolves to a GGUF file (a
    registered name is pulled), each `--index` file has a valid header, and an index's recorded
    model is on this machine when no `--model` is given. Loading proper happens after start-up,
    while /ready says 503."""
    from embedpipe.indexes import load_index
    from embedpipe.runtime.registry import resolve_model

    for spec in cfg.models:
        if spec.path is not None:
            resolve_model(spec.path)
    for spec in cfg.indexes:
        if not Path(spec.path).is_file():
            raise EmbedpipeError(f"--index {spec.name}={spec.path}: no such index file")
        recorded = load_index(spec.path, verify=False).meta.model_path
        if not cfg.models and (not recorded or not Path(recorded).is_file()):
            raise EmbedpipeError(
                f"--index {spec.name}={spec.path}: its model ({recorded or 'not recorded'}) is not on this "
                "machine; pass that GGUF with --model"
            )


def file_stem(path: str) -> str:
    """A GGUF file's name without `.gguf`: what a model file is served or aliased as."""
    return Path(path).name.removesuffix(".gguf")


def served_name(spec: str | None, path: str) -> str:
    """The name a `--model` without `NAME=` is served under: a registered name as typed
    (`name:quant` as `name-quant`, the stem of its cached file), else the GGUF file's name
    without `.gguf`. A file of the model store gets the name its registered spelling would
    give, so a model is served under one name however it was found (default model, registry
    name, cached path, an index's recorded model)."""
    from embedpipe.runtime.registry import DEFAULT_QUANT, registered_name

    if spec is not None and not Path(spec).expanduser().is_file():
        return spec.replace(":", "-")
    stem = file_stem(path)
    name = registered_name(path)
    if name is not None and stem == f"{name}-{DEFAULT_QUANT}":
        return name
    return stem


@dataclass
class ServedModel:
    name: str
    path: str
    embedder: Embedder
    aemb: AsyncEmbedder
    load_seconds: float

    def describe(self, default_task: str) -> dict:
        """The /v1/models entry (OpenAI fields plus ours)."""
        return {
            "id": self.name,
            "object": "model",
            "created": int(Path(self.embedder.model_path).stat().st_mtime),
            "owned_by": "embedpipe",
            "dimensions": list(self.embedder.dims),
            "max_input_tokens": self.embedder.max_tokens,
            "default_task": default_task,
            "tasks": list(TASKS),
            "prompt_convention": self.embedder.prompts,
            "prompted_tasks": prompt_scheme(self.embedder.prompts).prompted_tasks(),
            "aliases": [f"{self.name}:{t}" for t in ("query", "document")],
        }


@dataclass
class ServedIndex:
    name: str
    path: str
    index: object  # embedpipe.indexes.VectorIndex
    model: ServedModel

    def describe(self) -> dict:
        ix = self.index
        return {
            "id": self.name,
            "object": "index",
            "type": ix.kind,
            "quant": ix.quant,
            "dim": ix.dim,
            "count": ix.count,
            "model": self.model.name,
            "task": ix.meta.task or None,
            "columns": sorted(ix.columns),
        }


class Catalog:
    """Loaded models and indexes; `resolve` maps a request's `model` field to (model, task)."""

    def __init__(self, cfg: ServeConfig, on_pass: Callable[[str], Callable[[PassStats], None]]):
        self.cfg = cfg
        self.on_pass = on_pass
        self.models: dict[str, ServedModel] = {}
        self.indexes: dict[str, ServedIndex] = {}
        self._by_path: dict[str, ServedModel] = {}
        # other names a request may use for a model: its GGUF file's stem when it is served under
        # its registered name (embeddinggemma-300m-q8_0 for embeddinggemma-300m); not listed
        self.aliases: dict[str, str] = {}

    @property
    def default_model(self) -> ServedModel | None:
        return next(iter(self.models.values()), None)

    # --- loading (blocking: runs on a thread while /ready says 503) ------------------------
    def load_all(self, on_model_loaded: Callable[[ServedModel], None] = lambda m: None) -> None:
        for spec in self.cfg.models:
            on_model_loaded(self._load_model(spec.path, spec.name))
        for spec in self.cfg.indexes:
            if spec.name in self.indexes:
                raise EmbedpipeError(f"two indexes are named {spec.name!r}; name them with --index NAME=PATH")
            self.indexes[spec.name] = self._load_index(spec.name, spec.path, on_model_loaded)
        if self.cfg.warmup:
            for served in self.models.values():
                # cut to the context: a model with a short one must still start
                served.embedder.encode(WARMUP_TEXTS, task=self.cfg.default_task, truncate=True)

    def _load_model(self, spec: str | None, name: str | None) -> ServedModel:
        from embedpipe.runtime.registry import resolve_model

        path = str(resolve_model(spec))
        key = str(Path(path).resolve())
        if key in self._by_path:
            return self._by_path[key]
        t0 = time.perf_counter()
        emb = Embedder.load(path, backend=self.cfg.backend, threads=self.cfg.threads)
        seconds = time.perf_counter() - t0
        named = name is not None
        name = name or served_name(spec, path)
        if name in self.models:
            raise EmbedpipeError(f"two models are named {name!r}; name them with --model NAME=PATH")
        if ":" in name:
            raise EmbedpipeError(f"model name {name!r} must not contain ':' (it separates the task alias)")
        aemb = AsyncEmbedder(
            emb,
            self.cfg.max_batch_tokens,
            self.cfg.max_batch_wait_ms,
            self.cfg.max_queue_tokens,
            on_pass=self.on_pass(name),
        )
        served = ServedModel(name, emb.model_path, emb, aemb, seconds)
        self.models[name] = served
        self._by_path[key] = served
        stem = file_stem(path)
        if not named and stem != name and ":" not in stem:
            self.aliases.setdefault(stem, name)
        log.info("loaded model %s from %s in %.2f s", name, path, seconds)
        return served

    def _load_index(self, name: str, path: str, on_model_loaded: Callable[[ServedModel], None]) -> ServedIndex:
        from embedpipe.indexes import load_index
        from embedpipe.indexes.query import ModelMismatchError

        index = load_index(path)
        want = index.meta.model_sha256
        model = next((m for m in self.models.values() if want and m.embedder.model_sha256 == want), None)
        if model is None:
            recorded = index.meta.model_path
            if not recorded or not Path(recorded).is_file():
                raise EmbedpipeError(
                    f"--index {name}={path}: its model ({recorded or 'not recorded'}) is not on this "
                    "machine; pass that GGUF with --model"
                )
            model = self._load_model(recorded, None)
            on_model_loaded(model)
            if want and model.embedder.model_sha256 != want:
                raise ModelMismatchError(
                    "indexes",
                    f"{name}={path}: {recorded} is not the model the index was built "
                    f"from (SHA-256 {want[:16]}…); pass the right one with {{models}}",
                    ("models",),
                )
        log.info("loaded index %s (%s, %d vectors) from %s", name, index.kind, index.count, path)
        return ServedIndex(name, path, index, model)

    # --- requests ---------------------------------------------------------------------------
    def resolve(self, field: str | None) -> tuple[ServedModel, str | None]:
        """(model, task from an alias or None) for the request's `model` field; 404 if unknown."""
        if field is None or field == "":
            model = self.default_model
            if model is None:
                raise APIError(404, "this server has no embedding model loaded", "model_not_found", "model")
            return model, None
        if model := self._named(field):
            return model, None
        name, _, alias = field.rpartition(":")
        if model := self._named(name):
            try:
                return model, canonical_task(alias)
            except EmbedpipeError:
                raise APIError(
                    400,
                    f"model alias {field!r}: unknown task {alias!r}; use one of {', '.join(TASKS)}",
                    "invalid_value",
                    "model",
                ) from None
        raise APIError(
            404,
            f"model {field!r} is not served here; loaded: {', '.join(self.models) or 'none'} (GET /v1/models)",
            "model_not_found",
            "model",
        )

    def _named(self, name: str) -> ServedModel | None:
        """The model served under `name` or one of its aliases."""
        return self.models.get(name) or self.models.get(self.aliases.get(name, ""))

    def index(self, name: str) -> ServedIndex:
        if name not in self.indexes:
            raise APIError(
                404,
                f"index {name!r} is not loaded; loaded: {', '.join(self.indexes) or 'none'} "
                "(start the server with --index [NAME=]PATH)",
                "index_not_found",
                "index",
            )
        return self.indexes[name]

    async def aclose(self) -> None:
        for served in self.models.values():
            await served.aemb.aclose()
