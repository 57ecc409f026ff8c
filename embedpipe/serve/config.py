"""Settings of one `embedpipe serve` process, validated once at start."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.runtime.embedder import DEFAULT_MAX_BATCH_TOKENS
from embedpipe.runtime.prompts import canonical_task

LONG_POLICIES: tuple[str, ...] = ("truncate", "error")
DEFAULT_TASK = "query"
DEFAULT_PORT = 8080


@dataclass
class ModelSpec:
    """`--model [NAME=]PATH`; no path means the cached default model."""

    name: str | None
    path: str | None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, sep, path = text.partition("=")
        if sep and name and path and not Path(text).exists():
            return cls(name.strip(), path.strip())
        return cls(None, text)


@dataclass
class IndexSpec:
    """`--index [NAME=]PATH`; without a name the index is served under its file name without
    the extension (`out/docs.idx` as `docs`), as a `--model` path is."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        name, sep, path = text.partition("=")
        if sep and not Path(text).exists():
            if not name.strip() or not path.strip():
                raise EmbedpipeError(f"--index {text!r}: write [NAME=]PATH, e.g. --index docs=out/brute.idx")
            return cls(name.strip(), path.strip())
        if not text.strip():
            raise EmbedpipeError("--index '': name an index file, e.g. --index out/brute.idx")
        return cls(Path(text).stem, text)


@dataclass
class ServeConfig:
    models: list[ModelSpec] = field(default_factory=list)
    indexes: list[IndexSpec] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_wait_ms: float = 2.0
    max_queue_tokens: int = 16 * DEFAULT_MAX_BATCH_TOKENS
    max_client_batch: int = 2048
    max_request_bytes: int = 4_000_000
    long: str = "truncate"
    default_task: str = DEFAULT_TASK
    backend: str = "auto"
    threads: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    cache_memory_bytes: int = 64 << 20
    shutdown_timeout: float = 30.0
    warmup: bool = True
    access_log: bool = True

    def validate(self) -> ServeConfig:
        if self.long not in LONG_POLICIES:
            raise ArgumentError("long", f"must be one of {', '.join(LONG_POLICIES)}, got {self.long!r}")
        self.default_task = canonical_task(self.default_task)
        for name in ("max_batch_tokens", "max_queue_tokens", "max_client_batch", "max_request_bytes"):
            if int(getattr(self, name)) <= 0:
                raise ArgumentError(name, f"must be positive, got {getattr(self, name)}")
        if self.max_batch_wait_ms < 0:
            raise ArgumentError("max_batch_wait_ms", f"must be >= 0, got {self.max_batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ArgumentError("port", f"must be in 0..65535, got {self.port}")
        if self.shutdown_timeout <= 0:
            raise ArgumentError("shutdown_timeout", f"must be positive, got {self.shutdown_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise ArgumentError("api_key", "is empty; give a non-empty key (or {api_key_file})", ("api_key_file",))
        names = [i.name for i in self.indexes]
        if len(set(names)) != len(names):
            raise ArgumentError("indexes", f"names must be unique, got {', '.join(names)}")
        if not self.models:
            self.models = [ModelSpec(None, None)] if not self.indexes else []
        return self

    def key_matches(self, presented: str | None) -> bool:
        """Constant-time comparison of a presented key with ours (True when no key is set)."""
        if self.api_key is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self.api_key.encode())


def read_api_key(path: str) -> str:
    """The first line of an API key file (so the key stays out of `ps` and shell history)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError("api_key_file", f"{path}: cannot read it ({exc})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ArgumentError("api_key_file", f"{path} is empty; put the key on its first line")
    return key


def api_key_from_env() -> str | None:
    return os.environ.get("EMBEDPIPE_API_KEY") or None
