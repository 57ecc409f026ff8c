"""Shared fixtures: the tiny synthetic model (fast) and the real model (marked `model`)."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import TinyModel, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _caches_for_the_suite(tmp_path_factory):
    """Repacked-weight caches of the suite's temporary models go to a temporary directory,
    not the user's cache (tests that look at the cache point it elsewhere themselves); compiled
    kernels stay in the user's kernel cache wherever a test moves the cache root."""
    from embedpipe.runtime.cache_root import KERNELS_ENV, kernels_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("EMBEDPIPE_WEIGHT_CACHE_DIR", str(tmp_path_factory.mktemp("weight_cache")))
    # kernels live under EMBEDPIPE_CACHE_DIR, which many tests point at a temporary directory:
    # pin the user's kernel cache so those tests (and their subprocesses) do not compile afresh
    mp.setenv(KERNELS_ENV, str(kernels_dir()))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model) -> Path:
    return tiny_model.path


@pytest.fixture(scope="session")
def tiny_model_q8(tmp_path_factory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_q8"), qtype=gguf.GGMLQuantizationType.Q8_0)
