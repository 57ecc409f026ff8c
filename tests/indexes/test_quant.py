"""Scale schemes: every registered scheme against the float reconstruction it promises."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes.quant import NO_SCALE, SCALE_SCHEMES, STORAGE_TYPES, quantize, scale_scheme

from .helpers import clustered


@pytest.mark.parametrize("quant", ["int8", "int16"])
@pytest.mark.parametrize("mode", list(SCALE_SCHEMES))
def test_folded_scores_equal_scores_of_the_reconstruction(quant, mode):
    """query_weights + scale_rows on raw codes (what the scans and kernels compute) + the offset
    term give exactly the scores of the dequantized vectors."""
    x, q = clustered(300, 32, seed=1), clustered(5, 32, seed=2)
    scheme = scale_scheme(quant, mode)
    codes, scale, offset = quantize(x, quant, mode)
    raw = scheme.query_weights(q, scale) @ codes.astype(np.float32).T
    folded = scheme.scale_rows(raw, scale, slice(None))
    folded = folded + (q @ offset)[:, None] if len(offset) else folded
    want = q @ scheme.dequantize(codes, scale, offset).T
    np.testing.assert_allclose(folded, want, rtol=1e-5, atol=1e-5)
    rows = np.array([3, 7, 299])
    np.testing.assert_array_equal(
        scheme.dequantize(codes[rows], scale, offset, rows), scheme.dequantize(codes, scale, offset)[rows]
    )
    np.testing.assert_allclose(
        scheme.row_scale(scale, len(x)) * np.ones(len(x)), scale if mode == "vector" else np.ones(len(x))
    )


def test_fp32_is_the_identity_scheme_and_unknown_modes_fail():
    assert scale_scheme("fp32", "dim") is NO_SCALE and scale_scheme("int8", "dim").name == "dim"
    x = clustered(10, 8)
    codes, scale, offset = quantize(x, "fp32", "vector")
    assert codes.dtype == STORAGE_TYPES["fp32"].dtype and not len(scale) and not len(offset)
    with pytest.raises(ValueError, match="unknown scale mode"):
        scale_scheme("int8", "row")


def test_calibrated_add_keeps_the_dim_scale():
    x = clustered(200, 16)
    codes, scale, offset = quantize(x[:100], "int8", "dim")
    scheme = scale_scheme("int8", "dim")
    more, s2, _ = quantize(x[100:], "int8", "dim", calibration=scheme.calibration(scale, offset))
    np.testing.assert_array_equal(s2, scale)
    assert scheme.extend_scale(scale, s2) is scale
    assert len(scale_scheme("int8", "vector").extend_scale(np.ones(3), np.ones(2))) == 5


@pytest.mark.parametrize("quant,mode", [("int8", "dim"), ("int8", "vector"), ("int16", "dim"), ("int16", "vector")])
def test_quantize_in_row_blocks_equals_one_block(monkeypatch, quant, mode):
    from embedpipe.indexes import quant as q

    x = np.random.default_rng(1).standard_normal((1000, 37)).astype(np.float32)
    monkeypatch.setattr(q, "QUANT_BLOCK", 10**9)
    whole = q.quantize(x, quant, mode)
    monkeypatch.setattr(q, "QUANT_BLOCK", 96)  # ragged last block
    for got, want in zip(q.quantize(x, quant, mode), whole):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
