"""Row-pair dots: every runnable ISA against the numpy twin and a float64 oracle, and indices
checked before any native call."""

import numpy as np
import pytest

from embedpipe.codegen.isa import runnable_isas
from embedpipe.codegen.pairdot import PAIRDOT, PAIRDOT_MODULE, PARALLEL_MIN_PAIRS, pairdot, pairdot_reference
from tests.codegen.helpers import assert_signature_is_the_compiled_ir_type

ISAS = runnable_isas()


def _case(n: int, L: int, m: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((L, d)).astype(np.float32)
    return X, rng.integers(0, n, m), Q, rng.integers(0, L, m)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    "n,L,m,d", [(1, 1, 1, 1), (5, 2, 9, 7), (9, 3, 40, 17), (64, 5, 100, 48), (300, 7, PARALLEL_MIN_PAIRS + 3, 100)]
)
def test_pairdot_matches_twin_and_float64(isa, n, L, m, d, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # the longest case splits over the pool
    X, rows, Q, qrows = _case(n, L, m, d, seed=n * d)
    got = PAIRDOT.on(isa)(X, rows, Q, qrows)
    want = np.einsum("ij,ij->i", X[rows].astype(np.float64), Q[qrows].astype(np.float64))
    np.testing.assert_allclose(got, pairdot_reference(X, rows, Q, qrows), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_no_pairs_is_an_empty_result():
    X, rows, Q, qrows = _case(4, 2, 0, 8)
    assert pairdot(X, rows, Q, qrows).shape == (0,)


@pytest.mark.parametrize(
    "rows,qrows,match",
    [
        ([0, 4], [0, 0], r"rows must lie in \[0, 4\)"),
        ([0, -1], [0, 0], r"rows must lie in \[0, 4\)"),
        ([0, 1], [0, 2], r"qrows must lie in \[0, 2\)"),
        ([0, 1], [-3, 0], r"qrows must lie in \[0, 2\)"),
        ([0, 1], [0], "one length"),
    ],
)
def test_indices_outside_the_arrays_are_refused_before_the_kernel(rows, qrows, match, monkeypatch):
    def no_native(*a, **kw):
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(PAIRDOT, "native", lambda *a, **kw: type("N", (), {"run": no_native})())
    X, _, Q, _ = _case(4, 2, 0, 8)
    with pytest.raises(ValueError, match=match):
        pairdot(X, np.array(rows), Q, np.array(qrows))


def test_operands_of_other_types_or_widths_are_refused():
    X, rows, Q, qrows = _case(4, 2, 3, 8)
    with pytest.raises(ValueError, match="float32 matrices of one width"):
        pairdot(X.astype(np.float64), rows, Q, qrows)
    with pytest.raises(ValueError, match="float32 matrices of one width"):
        pairdot(X, rows, Q[:, :4].copy(), qrows)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
def test_signature_is_the_compiled_ir_type(isa):
    assert_signature_is_the_compiled_ir_type(PAIRDOT_MODULE, isa)
