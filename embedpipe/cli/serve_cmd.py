"""`embedpipe serve`: parse options, hand them to embedpipe.serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedpipe.cli.common import backend_option, cache_dir_option, cache_max_bytes_option, threads_option
from embedpipe.errors import EmbedpipeError
from embedpipe.serve.config import (
    DEFAULT_PORT,
    DEFAULT_TASK,
    IndexSpec,
    ModelSpec,
    ServeConfig,
    api_key_from_env,
    read_api_key,
)
from embedpipe.units import parse_size


def serve(
    models: Optional[list[str]] = typer.Option(
        None,
        "--model",
        "-m",
        help="[NAME=]MODEL: a GGUF file or registered model name (`embedpipe model list`), served as NAME, "
        "else as the registered name (name:quant as name-quant) or the file name; repeat for several "
        "(default: EmbeddingGemma Q8_0, pulled on first use).",
    ),
    indexes: Optional[list[str]] = typer.Option(
        None,
        "--index",
        help="[NAME=]PATH of an index for /v1/search (NAME: default the file name without its extension); "
        "its model is loaded with it. Repeatable.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", help="Require 'Authorization: Bearer KEY' on /v1 routes (env EMBEDPIPE_API_KEY)."
    ),
    api_key_file: Optional[str] = typer.Option(
        None, "--api-key-file", help="Read the API key from the first line of this file."
    ),
    max_batch_tokens: int = typer.Option(
        16384, "--max-batch-tokens", help="Tokens per forward pass at most (packed, no padding)."
    ),
    max_batch_wait_ms: float = typer.Option(
        2.0, "--max-batch-wait-ms", help="How long an idle model waits for more requests to join a pass."
    ),
    max_queue_tokens: Optional[int] = typer.Option(
        None,
        "--max-queue-tokens",
        help="Tokens waiting per model at most; beyond: 429 + Retry-After (default 16 × --max-batch-tokens).",
    ),
    max_client_batch: int = typer.Option(2048, "--max-client-batch", help="Inputs per request at most."),
    max_request_bytes: str = typer.Option(
        "4MB", "--max-request-bytes", help="Largest request body (413 beyond), e.g. 4MB."
    ),
    long: str = typer.Option(
        "truncate",
        "--long",
        help="Inputs over the context: truncate (counted in the x-embedpipe-truncated header) or error (400).",
    ),
    default_task: str = typer.Option(
        DEFAULT_TASK,
        "--default-task",
        help="Prompt task when a request names none (a `task` field or a NAME:TASK model alias).",
    ),
    threads: Optional[int] = threads_option(),
    backend: str = backend_option(),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Answer repeated texts from the embedding cache shared with ingest."
    ),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_max_bytes: Optional[str] = cache_max_bytes_option(),
    shutdown_timeout: float = typer.Option(
        30.0, "--shutdown-timeout", help="Seconds SIGTERM/SIGINT waits for accepted requests before closing."
    ),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One JSON line per request on stderr."),
) -> None:
    """OpenAI-compatible embedding and search server (/v1/embeddings, /v1/search, /v1/models, /health, /ready, /metrics).

    Requests without a task use the default task ('query' unless --default-task says otherwise).
    """
    try:
        from embedpipe.serve.runner import run_server
    except ImportError as exc:
        raise EmbedpipeError(
            f"embedpipe serve needs the serve extra ({exc.name} is missing): pip install 'embedpipe[serve]'"
        ) from None
    if api_key and api_key_file:
        raise typer.BadParameter("give --api-key or --api-key-file, not both")
    key = read_api_key(api_key_file) if api_key_file else (api_key or api_key_from_env())
    cfg = ServeConfig(
        models=[ModelSpec.parse(m) for m in models or []],
        indexes=[IndexSpec.parse(i) for i in indexes or []],
        host=host,
        port=port,
        api_key=key,
        max_batch_tokens=max_batch_tokens,
        max_batch_wait_ms=max_batch_wait_ms,
        max_client_batch=max_client_batch,
        max_request_bytes=parse_size(max_request_bytes, "--max-request-bytes"),
        long=long,
        default_task=default_task,
        threads=threads,
        backend=backend,
        cache=cache,
        cache_dir=str(cache_dir) if cache_dir else None,
        cache_max_bytes=parse_size(cache_max_bytes, "--cache-max-bytes") if cache_max_bytes else None,
        shutdown_timeout=shutdown_timeout,
        access_log=access_log,
    )
    if max_queue_tokens is not None:
        cfg.max_queue_tokens = max_queue_tokens
    else:
        cfg.max_queue_tokens = 16 * max_batch_tokens
    run_server(cfg)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
