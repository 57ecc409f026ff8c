"""Where embedpipe keeps what it caches (models, repacked weights, tokenizer models, kernels).

One rule for every cache directory: the root is `--cache-dir` where a command takes one, else
$EMBEDPIPE_CACHE_DIR, else the XDG user cache dir of embedpipe (`~/.cache/embedpipe`); each cache
is a subdirectory of it (`weights/`, `tokenizers/`, `gguf_index/`, `kernels/`, and the embedding
cache file `embeddings.sqlite`). Two caches can be moved on their own by an environment variable
($EMBEDPIPE_WEIGHT_CACHE_DIR, $EMBEDPIPE_KERNEL_CACHE), which wins over $EMBEDPIPE_CACHE_DIR but
not over an explicit root: `embedpipe cache info --cache-dir X` looks under X only.

Kept apart from `store` so that a warm start, which only reads caches, imports nothing that
fetches or converts models.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EMBEDPIPE_CACHE_DIR"
WEIGHTS_ENV = "EMBEDPIPE_WEIGHT_CACHE_DIR"
KERNELS_ENV = "EMBEDPIPE_KERNEL_CACHE"

WEIGHTS = "weights"
TOKENIZERS = "tokenizers"
GGUF_INDEX = "gguf_index"
KERNELS = "kernels"


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """`root` (a `--cache-dir`), else $EMBEDPIPE_CACHE_DIR, else the XDG user cache dir of embedpipe."""
    if root is not None and os.fspath(root):
        return Path(root).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("embedpipe"))


def _subdir(name: str, env: str | None, root: str | os.PathLike[str] | None) -> Path:
    if root is None or not os.fspath(root):
        moved = os.environ.get(env) if env else None
        if moved:
            return Path(moved).expanduser()
    return cache_dir(root) / name


def weights_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Repacked weights: ``<root>/weights``; without a root $EMBEDPIPE_WEIGHT_CACHE_DIR wins."""
    return _subdir(WEIGHTS, WEIGHTS_ENV, root)


def kernels_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Compiled kernels: ``<root>/kernels``; without a root $EMBEDPIPE_KERNEL_CACHE wins."""
    return _subdir(KERNELS, KERNELS_ENV, root)


def tokenizers_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """SentencePiece models built from GGUF metadata: ``<root>/tokenizers``."""
    return _subdir(TOKENIZERS, None, root)


def gguf_index_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Remembered offsets of long GGUF string arrays: ``<root>/gguf_index``."""
    return _subdir(GGUF_INDEX, None, root)
