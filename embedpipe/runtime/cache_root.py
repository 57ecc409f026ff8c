"""Where embedpipe keeps what it caches (models, repacked weights, tokenizer models).

Kept apart from `store` so that a warm start, which only reads caches, imports nothing that
fetches or converts models.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EMBEDPIPE_CACHE_DIR"


def cache_dir() -> Path:
    """$EMBEDPIPE_CACHE_DIR, else the XDG user cache dir of embedpipe."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("embedpipe"))
