"""One rule for where every cache lives (`runtime.cache_root`): the root is --cache-dir, else
$EMBEDPIPE_CACHE_DIR, else the user cache dir; $EMBEDPIPE_WEIGHT_CACHE_DIR and
$EMBEDPIPE_KERNEL_CACHE move their cache on their own, except under an explicit root."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from embedpipe.codegen import jit
from embedpipe.pipeline.cache import EmbeddingCache
from embedpipe.runtime import cache_root, tokenizer, weight_cache


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("EMBEDPIPE_CACHE_DIR", "EMBEDPIPE_WEIGHT_CACHE_DIR", "EMBEDPIPE_KERNEL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_kernels_follow_the_cache_root(clean_env, tmp_path):
    clean_env.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path / "root"))
    assert jit.cache_dir() == tmp_path / "root" / "kernels"
    assert weight_cache.weights_dir() == tmp_path / "root" / "weights"
    assert tokenizer.tokenizer_cache_dir() == tmp_path / "root" / "tokenizers"
    assert EmbeddingCache.in_dir(None).path == tmp_path / "root" / "embeddings.sqlite"
    clean_env.setenv(jit.CACHE_ENV, str(tmp_path / "k"))
    clean_env.setenv(weight_cache.DIR_ENV, str(tmp_path / "w"))
    assert jit.cache_dir() == tmp_path / "k" and weight_cache.weights_dir() == tmp_path / "w"
    for name in ("EMBEDPIPE_CACHE_DIR", "EMBEDPIPE_WEIGHT_CACHE_DIR", "EMBEDPIPE_KERNEL_CACHE"):
        clean_env.delenv(name)
    default = Path(platformdirs.user_cache_dir("embedpipe"))
    assert jit.cache_dir() == default / "kernels" == cache_root.kernels_dir()


def test_an_explicit_root_holds_every_cache(clean_env, tmp_path):
    clean_env.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path / "env"))
    clean_env.setenv(jit.CACHE_ENV, str(tmp_path / "k"))
    clean_env.setenv(weight_cache.DIR_ENV, str(tmp_path / "w"))
    root = tmp_path / "explicit"
    assert cache_root.cache_dir(root) == root
    assert jit.cache_dir(root) == root / "kernels" == cache_root.kernels_dir(root)
    assert weight_cache.weights_dir(root) == root / "weights"
    assert tokenizer.tokenizer_cache_dir(root) == root / "tokenizers"
    assert not root.exists()  # naming a directory creates nothing
