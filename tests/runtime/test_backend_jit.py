"""The "jit" backend: the runtime's matmuls on embedpipe.codegen kernels, numpy as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.runtime.backend_jit import JitBackend
from embedpipe.runtime.backends import NumpyBackend, dequantize, make_backend
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import WeightTensor
from tests.codegen.helpers import random_raw


def _tensor(qtype: Q, n: int, k: int, seed: int = 0) -> WeightTensor:
    raw = random_raw(qtype, n, k, np.random.default_rng(seed))
    return WeightTensor("blk.0.ffn_up.weight", qtype, (n, k), raw.reshape(-1))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.F16, Q.F32, Q.Q6_K], ids=lambda q: q.name)
def test_jit_matches_numpy_backend(qtype):
    tensor = _tensor(qtype, 70, 256)
    x = np.random.default_rng(1).standard_normal((9, 256)).astype(np.float32)
    got = JitBackend(threads=2).prepare(tensor)(x)
    ref = NumpyBackend().prepare(tensor)(x)
    tol = 2e-2 if qtype not in (Q.F16, Q.F32) else 1e-5
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_unsupported_type_falls_back_to_numpy():
    tensor = _tensor(Q.Q5_0, 8, 64)
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    got = JitBackend(threads=1).prepare(tensor)(x)
    np.testing.assert_allclose(got, NumpyBackend().prepare(tensor)(x), rtol=1e-6)


def test_auto_prefers_jit():
    assert make_backend("auto", 1).name == "jit"


def test_tiny_model_jit_equals_numpy(tiny_model_q8):
    ids = [[2, 5, 9, 11, 1], [2, 7, 1]]
    jit = Embedder.load(tiny_model_q8.path, backend="jit", threads=2).encode_ids(ids)
    ref = Embedder.load(tiny_model_q8.path, backend="numpy").encode_ids(ids)
    assert (jit * ref).sum(axis=1).min() > 0.999


@pytest.mark.model
@pytest.mark.parametrize("quant", ["q8_0", "f32"])
def test_real_model_tensors(quant):
    """Every 2-D weight kind of the real model through the JIT backend vs float64 numpy."""
    from embedpipe.runtime.gguf_file import GGUFModelFile
    from embedpipe.runtime.store import ensure_model

    model = GGUFModelFile(ensure_model(quant))
    backend = JitBackend(threads=2)
    rng = np.random.default_rng(0)
    names = [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.5.attn_output.weight",
        "blk.5.ffn_gate.weight",
        "blk.23.ffn_down.weight",
        "dense_2.weight",
        "dense_3.weight",
    ]
    for name in names:
        tensor = model.tensors[name]
        n, k = tensor.shape
        x = rng.standard_normal((37, k)).astype(np.float32)
        ref = x.astype(np.float64) @ dequantize(tensor).astype(np.float64).T
        got = backend.prepare(tensor)(x)
        tol = 1e-5 if quant == "f32" else 1e-2
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), name


@pytest.mark.parametrize(("fixture", "bf16"), [("tiny_model_q8", True), ("tiny_model", False)])
def test_attention_rounds_to_bf16_only_behind_int8_products(fixture, bf16, request, monkeypatch):
    """Products with int weights round activations to 8 bits, so such a model lets attention
    round its operands to bf16 (the tile kernel, where it runs); an F32 model keeps it fp32."""
    from embedpipe.codegen import attention as A

    asked = []
    real = A.select_native
    monkeypatch.setattr(A, "select_native", lambda isa, bf16=False: asked.append(bf16) or real(isa, bf16))
    path = request.getfixturevalue(fixture).path
    Embedder.load(path, backend="jit", threads=2).encode_ids([[2, 5, 9, 11, 1], [2, 7, 1]])
    assert asked and set(asked) == {bf16}
