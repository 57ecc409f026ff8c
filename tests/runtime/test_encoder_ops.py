"""Encoder ops: exact GELU and LayerNorm with bias, JIT kernels and numpy twins against float64;
MPNet's relative position buckets against the bucketing rule written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime import encoder_ops


def _gelu64(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64).ravel()]).reshape(x.shape)


def _ln64(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


@pytest.fixture(scope="module")
def lib():
    from embedpipe.codegen import get_kernel_library

    try:
        return get_kernel_library(threads=2)
    except (RuntimeError, OSError, EmbedpipeError) as exc:  # no LLVM target for this host
        pytest.skip(f"JIT kernels unavailable: {exc}")


@pytest.mark.parametrize("size", [1, 15, 16, 33, 70_001])
def test_gelu_erf(lib, size) -> None:
    x = np.random.default_rng(size).standard_normal(size).astype(np.float32) * 4
    x[: min(size, 3)] = [0.0, -30.0, 30.0][: min(size, 3)]
    want = _gelu64(x)
    assert np.abs(encoder_ops.gelu_erf(x) - want).max() < 1e-6
    assert np.abs(lib.gelu_erf(x) - want).max() < 1e-6


@pytest.mark.parametrize("rows,d", [(1, 7), (3, 16), (130, 384), (600, 129)])
def test_layer_norm(lib, rows, d) -> None:
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, d)) * 3 + 40).astype(np.float32)  # a large mean: cancellation
    x[:, 0] *= 30  # BERT-like outlier feature
    w, b = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    want = _ln64(x, w, b, 1e-12)
    np.testing.assert_allclose(encoder_ops.layer_norm(x, w, b, 1e-12), want, rtol=3e-6, atol=2e-5)
    np.testing.assert_allclose(lib.layer_norm(x, w, b, 1e-12), want, rtol=3e-6, atol=2e-5)


def test_layer_norm_rejects_mismatched_weights(lib) -> None:
    from embedpipe.codegen.library import KernelInputError

    x = np.ones((2, 8), np.float32)
    with pytest.raises(KernelInputError):
        lib.layer_norm(x, np.ones(7, np.float32), np.ones(7, np.float32), 1e-5)


def test_relative_position_buckets() -> None:
    got = encoder_ops.relative_position_buckets(400, 32, 128)
    for i, j in [(0, 0), (0, 1), (1, 0), (0, 7), (0, 8), (0, 9), (5, 300), (300, 5), (0, 127), (0, 128), (0, 399)]:
        n = i - j  # query minus key
        bucket = 16 if n < 0 else 0
        n = abs(n)
        if n < 8:
            bucket += n
        else:
            bucket += min(15, 8 + int(math.log(n / 8) / math.log(128 / 8) * 8))
        assert got[i, j] == bucket, (i, j)
    assert got.min() == 0 and got.max() == 31
