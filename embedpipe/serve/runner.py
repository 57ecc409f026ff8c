"""Run the app on uvicorn until SIGTERM/SIGINT, then shut down gracefully and return.

On a signal uvicorn stops accepting connections, lets every accepted request finish (at most
`--shutdown-timeout` seconds), then runs the app's shutdown (queued model work is finished
first). uvicorn re-raises the captured signal when it is done; a no-op handler installed here
receives it, so the process exits 0 after a clean drain.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from embedpipe.errors import EmbedpipeError
from embedpipe.serve.app import create_app
from embedpipe.serve.catalog import preflight
from embedpipe.serve.config import ServeConfig

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def configure_logging(access_log: bool) -> None:
    """Server lines (and one JSON access line per request) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("embedpipe.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("embedpipe.serve.access").disabled = not access_log


def check_listen(host: str, port: int) -> None:
    """Refuse an address this process cannot listen on before uvicorn starts (its own failure
    comes after its start-up lines). Bound and released at once, as uvicorn binds it (with
    SO_REUSEADDR); port 0 (any free port) always passes."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise EmbedpipeError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise EmbedpipeError(
                f"could not listen on {host}:{port} ({exc.strerror}); pick another --port or stop what uses it"
            ) from None


def run_server(cfg: ServeConfig) -> None:
    """Serve until a signal; raises EmbedpipeError if models or indexes failed to load."""
    import uvicorn

    cfg.validate()  # the flags first: a bad --port is named as such, not as an address problem
    preflight(cfg)
    check_listen(cfg.host, cfg.port)
    app = create_app(cfg)
    state = app.state.server
    configure_logging(cfg.access_log)
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=cfg.shutdown_timeout,
        server_header=False,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    state.on_fatal = stop
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in SIGNALS}
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; say so in our one-line form below
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state.load_error:
        raise EmbedpipeError(state.load_error)
    if not server.started:
        raise EmbedpipeError(f"could not listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)")
