"""Our ggml type table (what a warm start uses instead of importing gguf) against gguf's own,
and the numpy dequantizers of the exact int8 formats against ``gguf.quants`` bit for bit."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import quants

from embedpipe.codegen.ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from embedpipe.codegen.quant_formats import FORMATS
from embedpipe.runtime import store
from embedpipe.runtime.gguf_names import QUANTS


def test_every_gguf_type_has_our_id_name_and_block_geometry():
    for theirs in gguf.GGMLQuantizationType:
        ours = GGMLQuantizationType[theirs.name]
        assert int(ours) == int(theirs) and ours == theirs and hash(ours) == hash(theirs)
        assert GGML_QUANT_SIZES[ours] == gguf.GGML_QUANT_SIZES[theirs], theirs.name
        assert GGML_QUANT_SIZES[theirs] == gguf.GGML_QUANT_SIZES[ours]  # either keys the other's table


def test_unknown_type_id_is_a_value_error():
    with pytest.raises(ValueError):
        GGMLQuantizationType(4)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.F16])
def test_exact_format_dequantizes_to_the_bits_of_gguf_quants(qtype):
    rng = np.random.default_rng(int(qtype))
    n, k = 7, 96
    fmt = FORMATS[qtype]
    w = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    raw = np.asarray(quants.quantize(w, gguf.GGMLQuantizationType(int(qtype)))).view(np.uint8).reshape(n, -1)
    want = np.asarray(quants.dequantize(raw, qtype), dtype=np.float32).reshape(n, k)
    got = fmt.dequantize(raw, n, k)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_store_quant_names_are_the_conversion_table_keys():
    assert store.QUANT_NAMES == tuple(QUANTS)
