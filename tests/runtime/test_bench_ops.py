"""Per-op profile of forward passes (runtime/bench_ops): attribution, nesting, restoration."""

import numpy as np
import pytest

from embedpipe.runtime.bench_ops import OTHER, format_profile, profile_ops


class _Weight:
    def __init__(self, n, k):
        self.n, self.k, self.family = n, k, "int"
        self.w = np.ones((k, n), np.float32)

    def __call__(self, x):
        return x @ self.w


class _Ops:
    def norm_matmul(self, w, x):
        assert w.family == "int"  # attributes reach the wrapped weight
        return self.rms_norm(w(x))  # nested: a weight and an op inside an op

    def rms_norm(self, x):
        return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)


class _Layer:
    def __init__(self):
        self.norm = np.ones(4, np.float32)
        self.w_in = _Weight(8, 4)
        self.w_out = _Weight(4, 8)


class _Model:
    def __init__(self):
        self.ops = _Ops()
        self.layers = [_Layer(), _Layer()]

    def embed(self, seqs):
        x = np.ones((sum(map(len, seqs)), 4), np.float32)
        for layer in self.layers:
            x = layer.w_out(self.ops.norm_matmul(layer.w_in, x))
        return x[: len(seqs)]


class _Embedder:
    def __init__(self):
        self.model = _Model()

    def encode_ids(self, ids, batch_size=32):
        return self.model.embed(ids)


def test_profile_attributes_each_outermost_call_once():
    emb = _Embedder()
    prof = profile_ops(emb, [[1, 2], [3]], repeats=2)
    ops = prof["ops"]
    assert set(ops) == {"norm_matmul(w_in)", "matmul w_out", OTHER}
    assert ops["norm_matmul(w_in)"]["calls"] == 2  # per run: one per layer, nested calls not counted
    assert ops["matmul w_out"]["calls"] == 2
    assert all(v["cpu_s"] >= 0 and v["wall_s"] >= 0 for v in ops.values())
    assert sum(v["cpu_s"] for v in ops.values()) == pytest.approx(prof["cpu_s"], rel=1e-6, abs=1e-9)


def test_profile_leaves_the_model_as_it_was():
    emb = _Embedder()
    before = emb.encode_ids([[1, 2, 3]])
    layer = emb.model.layers[0]
    weights = (layer.w_in, layer.w_out)
    profile_ops(emb, [[1, 2, 3]], repeats=1)
    assert (layer.w_in, layer.w_out) == weights
    assert "norm_matmul" not in vars(emb.model.ops)
    np.testing.assert_array_equal(emb.encode_ids([[1, 2, 3]]), before)


class _RowOps:
    def residual_norm(self, x, res):
        return x + res


class _EncoderModel(_Model):
    """An encoder: its row ops live in a second op set (``eops``) beside ``ops``."""

    def __init__(self):
        super().__init__()
        self.eops = _RowOps()

    def embed(self, seqs):
        x = super().embed(seqs)
        return self.eops.residual_norm(x, x)


def test_profile_times_an_encoders_row_ops_and_restores_them():
    emb = _Embedder()
    emb.model = _EncoderModel()
    before = emb.encode_ids([[1, 2]])
    ops = profile_ops(emb, [[1, 2]], repeats=2)["ops"]
    assert ops["residual_norm"]["calls"] == 1 and ops["norm_matmul(w_in)"]["calls"] == 2
    assert "residual_norm" not in vars(emb.model.eops)
    np.testing.assert_array_equal(emb.encode_ids([[1, 2]]), before)


def test_format_profile_lists_every_op():
    prof = profile_ops(_Embedder(), [[1]], repeats=1)
    lines = format_profile("short", 2, prof)
    assert lines[0].startswith("ops t=2 short:")
    assert len(lines) == 1 + len(prof["ops"])


@pytest.mark.model
def test_profile_of_embeddinggemma_names_its_ops_and_changes_no_vector():
    from embedpipe.runtime.embedder import Embedder
    from embedpipe.runtime.store import ensure_model

    emb = Embedder.load(ensure_model("q8_0"), backend="jit", threads=2)
    # more tokens than a recorded step program takes (those passes are one native call: "other")
    text = "a text about attention kernels and the matmul products around them, " * 4
    ids = emb.tokenize([text] * 4, "document")
    assert sum(map(len, ids)) > getattr(emb.model, "max_program_tokens", 0)
    before = emb.encode_ids(ids)
    prof = profile_ops(emb, ids, repeats=1)
    n_layers = emb.model.cfg.n_layers
    for name in ("norm_matmul(w_qkv)", "norm_matmul(w_gate_up)", "gelu_matmul(w_down)", "matmul wo", "attention"):
        assert prof["ops"][name]["calls"] == n_layers, name
    np.testing.assert_array_equal(emb.encode_ids(ids), before)


@pytest.mark.model
def test_profile_of_minilm_names_its_row_ops():
    from embedpipe.runtime.embedder import Embedder

    emb = Embedder.load("all-minilm-l6-v2", backend="jit", threads=2)
    ids = emb.tokenize(["a text about attention kernels and the products around them, " * 4] * 4, "document")
    assert sum(map(len, ids)) > getattr(emb.model, "max_program_tokens", 0)
    prof = profile_ops(emb, ids, repeats=1)
    n_layers = emb.model.cfg.n_layers
    assert prof["ops"]["attention"]["calls"] == n_layers
    assert prof["ops"]["bias_gelu_matmul(w_down)"]["calls"] == n_layers  # GELU fused into the product
    # each LayerNorm but the last runs inside the product that takes its output
    assert prof["ops"]["residual_norm_matmul(w_qkv)"]["calls"] == n_layers
    assert prof["ops"]["residual_norm_matmul(w_up)"]["calls"] == n_layers
    assert prof["ops"]["residual_norm"]["calls"] == 1
