"""The gemma-embedding forward pass against an independent float64 reference written here."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from synthetic import TinyConfig, build_tiny_model

from embedpipe.errors import EmbedpipeError, InputTooLongError
from embedpipe.runtime.embedder import Embedder


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, pos, theta):
    """NeoX rotation of x[..., d] for positions pos, written out in float64."""
    d = x.shape[-1]
    half = d // 2
    out = np.empty_like(x)
    for t, p in enumerate(pos):
        for i in range(half):
            ang = p * theta ** (-2.0 * i / d)
            c, s = math.cos(ang), math.sin(ang)
            a, b = x[t, ..., i], x[t, ..., i + half]
            out[t, ..., i] = a * c - b * s
            out[t, ..., i + half] = b * c + a * s
    return out


def reference_embedding(
    weights: dict[str, np.ndarray], cfg: TinyConfig, ids: list[int], window: bool = True
) -> np.ndarray:
    """float64 forward pass of one sequence, straight from the model description."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    t = len(ids)
    x = w["token_embd.weight"][ids] * math.sqrt(cfg.hidden)
    pos = np.arange(t)
    for il in range(cfg.n_layers):
        p = f"blk.{il}."
        is_global = il % cfg.swa_period == cfg.swa_period - 1
        theta = cfg.rope_global if is_global else cfg.rope_local
        h = _rms(x, w[p + "attn_norm.weight"], cfg.eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, cfg.n_head, cfg.head_dim)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, cfg.n_kv_head, cfg.head_dim)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, cfg.n_kv_head, cfg.head_dim)
        q = _rope(_rms(q, w[p + "attn_q_norm.weight"], cfg.eps), pos, theta) / math.sqrt(cfg.head_dim)
        k = _rope(_rms(k, w[p + "attn_k_norm.weight"], cfg.eps), pos, theta)
        heads = []
        for hq in range(cfg.n_head):
            hk = hq // (cfg.n_head // cfg.n_kv_head)
            scores = q[:, hq] @ k[:, hk].T
            if window and not is_global:
                far = np.abs(pos[:, None] - pos[None, :]) > cfg.sliding_window // 2
                scores = np.where(far, -np.inf, scores)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            heads.append(probs @ v[:, hk])
        o = np.concatenate(heads, axis=-1) @ w[p + "attn_output.weight"].T
        x = x + _rms(o, w[p + "post_attention_norm.weight"], cfg.eps)
        h = _rms(x, w[p + "ffn_norm.weight"], cfg.eps)
        g = h @ w[p + "ffn_gate.weight"].T
        gelu = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
        f = (gelu * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + _rms(f, w[p + "post_ffw_norm.weight"], cfg.eps)
    pooled = _rms(x, w["output_norm.weight"], cfg.eps).mean(0)
    if "dense_2.weight" in w:
        pooled = w["dense_3.weight"] @ (w["dense_2.weight"] @ pooled)
    return pooled / np.linalg.norm(pooled)


def _dequantized(model) -> dict[str, np.ndarray]:
    """The weights exactly as the GGUF stores them (quantization error included)."""
    reader = gguf.GGUFReader(model.path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    return out


TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Whitespace   runs\tand\nnewlines, numbers 12345, emoji 🙂 and ünïcödé.",
    "a long one: " + "vectors land close together when texts are similar. " * 3,
    "",
]


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_q8"])
def test_matches_float64_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    emb = Embedder.load(model.path, backend="numpy")
    weights = _dequantized(model)
    ids = emb.tokenize(TEXTS, task="document")
    assert max(len(s) for s in ids) > model.cfg.sliding_window, "a text must be longer than the window"
    got = emb.encode(TEXTS, task="document")
    for i, seq in enumerate(ids):
        want = reference_embedding(weights, model.cfg, seq)
        cos = float(got[i] @ want)
        assert cos > 0.99999, (i, cos)
        np.testing.assert_allclose(got[i], want, atol=2e-5)


def test_sliding_window_bites(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    seq = emb.tokenize([TEXTS[3]], task="document")[0]
    got = emb.encode_ids([seq])[0]
    full = reference_embedding(tiny_model.weights, tiny_model.cfg, seq, window=False)
    windowed = reference_embedding(tiny_model.weights, tiny_model.cfg, seq, window=True)
    assert abs(float(got @ windowed)) > 0.99999
    assert float(got @ full) < 0.9999, "the window must change the result on a long text"


def test_batch_and_order_invariance(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    together = emb.encode(TEXTS, batch_size=3)
    alone = np.stack([emb.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    reversed_ = emb.encode(TEXTS[::-1], batch_size=64)
    np.testing.assert_allclose(reversed_[::-1], together, atol=1e-6)


def test_matryoshka_truncates_then_renormalizes(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    full = emb.encode(TEXTS, dim=64)
    small = emb.encode(TEXTS, dim=32, any_dim=True)
    expect = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expect, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-6)
    with pytest.raises(EmbedpipeError, match="dim 65"):
        emb.encode(TEXTS, dim=65, any_dim=True)
    with pytest.raises(
        EmbedpipeError, match="dim 32 is not offered by this model: choose one of 64, or pass any_dim=True"
    ):
        emb.encode(TEXTS, dim=32)


def test_prompts_change_the_vector(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    q = emb.encode(["bread"], task="query")[0]
    d = emb.encode(["bread"], task="document")[0]
    titled = emb.encode(["bread"], task="document", titles=["Baking"])[0]
    assert emb.format_texts(["bread"], "document", ["Baking"]) == ["title: Baking | text: bread"]
    assert emb.format_texts(["bread"], "clustering") == ["task: clustering | query: bread"]
    assert float(q @ d) < 0.9999 and float(d @ titled) < 0.9999
    with pytest.raises(EmbedpipeError, match="unknown task"):
        emb.encode(["bread"], task="nonsense")


def test_too_long_raises_unless_truncated(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    long_text = "vectors land close together " * 100
    with pytest.raises(InputTooLongError, match="context"):
        emb.encode([long_text])
    vec = emb.encode([long_text], truncate=True)
    ids = emb.tokenize([long_text], task="query", truncate=True)[0]
    assert len(ids) == tiny_model.cfg.context and ids[0] == emb.bos_id and ids[-1] == emb.eos_id
    np.testing.assert_allclose(vec[0], emb.encode_ids([ids])[0], atol=1e-6)


def test_non_string_input_is_refused(tiny_model):
    emb = Embedder.load(tiny_model.path, backend="numpy")
    with pytest.raises(EmbedpipeError, match="not str"):
        emb.encode(["ok", None])  # type: ignore[list-item]
    with pytest.raises(EmbedpipeError, match="list of texts"):
        emb.encode("just one string")  # type: ignore[arg-type]


def test_missing_dense_head_loads_with_a_warning(tmp_path, caplog):
    model = build_tiny_model(tmp_path, with_dense=False)
    with caplog.at_level("WARNING"):
        emb = Embedder.load(model.path, backend="numpy")
    assert "dense_2/dense_3" in caplog.text
    seq = emb.tokenize(["hello"], task="document")[0]
    want = reference_embedding(model.weights, model.cfg, seq)
    assert float(emb.encode_ids([seq])[0] @ want) > 0.99999


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32])
def test_dense_head_is_one_product_of_its_two_layers(tmp_path, qtype):
    """dense_3 · dense_2 (no bias or activation between them) as one fp32 weight, taken in
    float64 from the exact dequantized layers; the model runs it as its only head product."""
    from embedpipe.runtime.backends import dequantize
    from embedpipe.runtime.gemma_embedding import dense_head
    from embedpipe.runtime.gguf_file import GGUFModelFile

    tm = build_tiny_model(tmp_path, qtype=qtype)
    mf = GGUFModelFile(tm.path)
    head = dense_head(mf)
    w2, w3 = (dequantize(mf.tensors[n]).astype(np.float64) for n in ("dense_2.weight", "dense_3.weight"))
    assert head.qtype == gguf.GGMLQuantizationType.F32 and head.shape == (w3.shape[0], w2.shape[1])
    np.testing.assert_allclose(dequantize(head), w3 @ w2, rtol=1e-6, atol=1e-6 * np.abs(w3 @ w2).max())
    for backend in ("jit", "numpy"):
        assert len(Embedder.load(tm.path, backend=backend, threads=1).model.dense) == 1
