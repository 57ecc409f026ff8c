"""Spherical 2-means over row samples: every runnable ISA against the numpy twin and a float64
oracle, ragged node sizes, and indices checked before any native call."""

import numpy as np
import pytest

from embedpipe.codegen.isa import runnable_isas
from embedpipe.codegen.twomeans import TWO_MEANS, TWO_MEANS_MODULE, two_means, two_means_reference
from tests.codegen.helpers import assert_signature_is_the_compiled_ir_type

ISAS = runnable_isas()


def _case(n: int, d: int, sizes: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sample = np.concatenate([[]] + [rng.choice(n, s, replace=False) for s in sizes]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cent = np.stack([X[rng.choice(n, 2, replace=False)] for _ in sizes]) if sizes else np.zeros((0, 2, d), np.float32)
    return X, sample, starts, cent


def _oracle(X, sample, starts, cent, iters):
    """float64, written from the definition: nearest centroid by dot, sums, normalize."""
    out = cent.astype(np.float64)
    for t in range(len(starts) - 1):
        pts = X[sample[starts[t] : starts[t + 1]]].astype(np.float64)
        c = out[t]
        for _ in range(iters):
            scores = pts @ c.T
            second = scores[:, 1] > scores[:, 0]
            for side, mask in ((0, ~second), (1, second)):
                if mask.any():
                    c[side] = pts[mask].sum(axis=0)
                norm = np.linalg.norm(c[side])
                c[side] /= norm if norm else 1.0
    return out


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    "n,d,sizes,iters",
    [
        (40, 1, [3, 7], 2),
        (300, 17, [256, 1, 0, 2, 33], 6),  # ragged width; empty, lone-point and tiny nodes
        (900, 100, [256] * 5 + [77], 6),  # several nodes per pool item
        (600, 768, [256, 256, 19], 3),
    ],
)
def test_two_means_matches_twin_and_float64(isa, n, d, sizes, iters, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # nodes split over the pool
    X, sample, starts, cent = _case(n, d, sizes, seed=n + d)
    got = TWO_MEANS.on(isa)(X, sample, starts, cent.copy(), iters)
    np.testing.assert_allclose(got, two_means_reference(X, sample, starts, cent.copy(), iters), atol=2e-5)
    np.testing.assert_allclose(got, _oracle(X, sample, starts, cent, iters), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=2), 1.0, atol=1e-5)


def test_no_steps_or_no_nodes_return_the_start():
    X, sample, starts, cent = _case(50, 8, [5, 6])
    np.testing.assert_array_equal(two_means(X, sample, starts, cent, 0), cent)
    X, sample, starts, cent = _case(50, 8, [])
    assert two_means(X, sample, starts, cent, 6).shape == (0, 2, 8)


def test_a_node_whose_points_all_side_with_one_centroid_keeps_the_other():
    X = np.eye(4, dtype=np.float32)
    cent = np.stack([[X[0], -X[0]]])
    got = two_means(X, np.array([0, 1]), np.array([0, 2]), cent, 3)
    np.testing.assert_allclose(got[0, 1], -X[0])  # won no point: unchanged
    np.testing.assert_allclose(got[0, 0], (X[0] + X[1]) / np.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize(
    "sample,starts,match",
    [
        ([0, 9], [0, 2], r"sample rows must lie in \[0, 9\)"),
        ([0, -1], [0, 2], r"sample rows must lie in \[0, 9\)"),
        ([0, 1], [1, 2], "starts must rise from 0"),
        ([0, 1], [0, 3], "starts must rise from 0"),
        ([0, 1, 2], [0, 2, 1, 3], "starts must rise from 0"),
    ],
)
def test_indices_outside_the_data_are_refused_before_the_kernel(sample, starts, match, monkeypatch):
    def no_native(*a, **kw):
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(TWO_MEANS, "native", lambda *a, **kw: type("N", (), {"run": no_native})())
    X = np.eye(9, dtype=np.float32)
    nodes = len(starts) - 1
    with pytest.raises(ValueError, match=match):
        two_means(X, np.array(sample), np.array(starts), np.zeros((nodes, 2, 9), np.float32), 2)


def test_centroids_of_the_wrong_shape_are_refused():
    X, sample, starts, cent = _case(50, 8, [5, 6])
    with pytest.raises(ValueError, match="centroids must be C-contiguous float32"):
        two_means(X, sample, starts, cent[:1], 2)


def test_the_kernel_works_in_place_and_the_function_on_a_copy():
    X, sample, starts, cent = _case(60, 16, [20, 30])
    start = cent.copy()
    got = two_means(X, sample, starts, cent, 4)
    np.testing.assert_array_equal(cent, start)
    assert TWO_MEANS(X, sample, starts, cent, 4) is cent
    np.testing.assert_allclose(cent, got, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
def test_signature_is_the_compiled_ir_type(isa):
    assert_signature_is_the_compiled_ir_type(TWO_MEANS_MODULE, isa)
