"""The caches a model load fills and a later load reads: repacked weights (one file per model
file and packing), tokenizer models (one per vocabulary, shared by every file with it), GGUF
string-array offsets (one per model file version) and compiled kernels (shared by every
model). What `embedpipe cache info` lists and `embedpipe cache clear --load-caches` deletes;
all rebuilt on the next load.

`root` is a cache root given explicitly (a `--cache-dir`): the caches under it, whatever the
environment says; None is the cache root and per-cache overrides of `runtime.cache_root`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedpipe.runtime import cache_root, weight_cache

Root = str | os.PathLike[str] | None


@dataclass(frozen=True)
class LoadCaches:
    """What is in the load caches under one root."""

    weights_dir: Path
    weights: list[weight_cache.CacheFileInfo]
    weights_max_bytes: int
    tokenizers_dir: Path
    tokenizers: list[Path]
    tokenizers_max_bytes: int
    kernels_dir: Path
    kernels: list[Path]
    gguf_index_dir: Path
    gguf_index: list[Path]
    gguf_index_kept: int

    @property
    def weight_bytes(self) -> int:
        return sum(f.bytes for f in self.weights)

    @property
    def tokenizer_bytes(self) -> int:
        return _sizes(self.tokenizers)

    @property
    def kernel_bytes(self) -> int:
        return _sizes(self.kernels)

    @property
    def gguf_index_bytes(self) -> int:
        return _sizes(self.gguf_index)


@dataclass(frozen=True)
class Cleared:
    """What `clear` deleted; `shared_kept` is true when it kept the caches no one model owns."""

    weights: int
    tokenizers: int
    kernels: int
    bytes: int
    gguf_index: int = 0
    shared_kept: bool = False


def _sizes(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def survey(root: Root = None) -> LoadCaches:
    """List the load caches under `root`; reads directories only, creates nothing."""
    from embedpipe.codegen import jit
    from embedpipe.runtime import gguf_file, tokenizer

    weights_dir = cache_root.weights_dir(root)
    tokenizers_dir = cache_root.tokenizers_dir(root)
    kernels_dir = cache_root.kernels_dir(root)
    gguf_index_dir = cache_root.gguf_index_dir(root)
    return LoadCaches(
        weights_dir,
        weight_cache.list_files(weights_dir),
        weight_cache.max_bytes(),
        tokenizers_dir,
        tokenizer.cache_files(tokenizers_dir),
        tokenizer.CACHE_MAX_BYTES,
        kernels_dir,
        jit.cache_files(kernels_dir),
        gguf_index_dir,
        sorted(gguf_index_dir.glob("*.npz")) if gguf_index_dir.is_dir() else [],
        gguf_file.SAVED_INDEX_KEEP,
    )


def places(root: Root = None) -> list[Path]:
    """The directories `clear(root)` deletes from."""
    return [
        cache_root.weights_dir(root),
        cache_root.tokenizers_dir(root),
        cache_root.gguf_index_dir(root),
        cache_root.kernels_dir(root),
    ]


def model_matcher(sha256_prefix: str, path: Path | None = None) -> Callable[[weight_cache.CacheFileInfo], bool]:
    """Whether a repacked-weight file was made from the model: its recorded model file is
    `path`, or that file's SHA-256 starts with `sha256_prefix` (hashed once per file, and
    remembered beside it as every load does)."""
    from embedpipe.runtime.gguf_file import file_sha256

    want = path.resolve() if path is not None else None
    prefix = sha256_prefix.lower()
    hashes: dict[str, str | None] = {}

    def matches(info: weight_cache.CacheFileInfo) -> bool:
        model = Path(info.model)
        if want is not None and model == want:
            return True
        if info.model not in hashes:
            try:
                hashes[info.model] = file_sha256(model) if model.is_file() else None
            except OSError:
                hashes[info.model] = None
        digest = hashes[info.model]
        return digest is not None and digest.startswith(prefix)

    return matches


def clear(root: Root = None, model: Callable[[weight_cache.CacheFileInfo], bool] | None = None) -> Cleared:
    """Delete the load caches under `root`. With `model` (see `model_matcher`) only that
    model's repacked weights: tokenizer models (per vocabulary) and kernels (per ISA) are shared
    between models, so they are kept, as are the GGUF offsets (a few MB, keyed by path alone)."""
    from embedpipe.codegen import jit

    found = survey(root)
    weights = [f for f in found.weights if model is None or model(f)]
    size = 0
    for f in weights:
        f.path.unlink(missing_ok=True)
        size += f.bytes
    if model is not None:
        return Cleared(len(weights), 0, 0, size, shared_kept=True)
    tokenizers, tokenizer_bytes = _unlink(found.tokenizers)
    offsets, offset_bytes = _unlink(found.gguf_index)
    kernels, kernel_bytes = jit.clear_cache(found.kernels_dir)
    return Cleared(len(weights), tokenizers, kernels, size + tokenizer_bytes + offset_bytes + kernel_bytes, offsets)


def _unlink(paths: list[Path]) -> tuple[int, int]:
    """Delete `paths`; (files, bytes) deleted. One already gone (another process) is skipped."""
    files, size = 0, 0
    for p in paths:
        try:
            n = p.stat().st_size
            p.unlink()
        except OSError:
            continue
        files += 1
        size += n
    return files, size
