"""The ONNX Runtime bench peer on tiny hand-built graphs: a transformer-body export (3-D
last_hidden_state, pooled and normalized by the peer) and a whole-pipeline export (2-D
sentence vectors, as scripts/export_onnx.py writes for EmbeddingGemma, only normalized)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from embedpipe.runtime.bench_peers import OnnxRuntimePeer, PeerUnavailable
from embedpipe.runtime.convert import convert_checkout
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.tokenizer import load_tokenizer
from tests.runtime.bert_checkout_builder import build_bert_checkout

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TEXTS = ["hello world", "The quick brown fox, jumping!", "a"]
DIM = 8


def table(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((vocab, DIM)).astype(np.float32)


def save_graph(path: Path, emb: np.ndarray, pooled: bool) -> None:
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["hidden"])]
    out_name, out_shape = "last_hidden_state", ["batch", "sequence", DIM]
    if pooled:
        nodes.append(helper.make_node("ReduceMax", ["hidden"], ["sentence_embedding"], axes=[1], keepdims=0))
        out_name, out_shape = "sentence_embedding", ["batch", DIM]
    else:
        nodes.append(helper.make_node("Identity", ["hidden"], [out_name]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(emb, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("onnx_peer")
    return convert_checkout(build_bert_checkout(base / "bert"), base / "bert-f32.gguf", "f32")


@pytest.mark.parametrize("pooled", [False, True])
def test_peer_pools_bodies_and_passes_pipeline_vectors(model, tmp_path, pooled) -> None:
    tok = load_tokenizer(GGUFModelFile(model))
    ids = tok.encode_batch(TEXTS)
    emb = table(max(max(s) for s in ids) + 1)
    save_graph(tmp_path / "onnx" / "model.onnx", emb, pooled)
    # the toy pipeline pools padding too, so it sees one text per batch; the body case pads
    cfg = SimpleNamespace(model=str(model), batch_size=1 if pooled else 2, onnx_dir=str(tmp_path / "onnx"))
    got = OnnxRuntimePeer("fp32", cfg, 1).encode(TEXTS)
    want = np.stack([emb[s].max(0) if pooled else emb[s].mean(0) for s in ids])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert got.shape == (len(TEXTS), DIM)
    assert np.abs(got - want).max() < 1e-5


def test_missing_export_is_reported(model, tmp_path) -> None:
    cfg = SimpleNamespace(model=str(model), batch_size=2, onnx_dir=str(tmp_path))
    with pytest.raises(PeerUnavailable, match="export_onnx.py"):
        OnnxRuntimePeer("int8", cfg, 1)


def test_batches_are_texts_of_similar_length(model, tmp_path) -> None:
    """Like sentence-transformers, the peer batches length-sorted texts, so no batch pads a
    short text to a long one's width (the vectors still come back in input order)."""
    tok = load_tokenizer(GGUFModelFile(model))
    ids = tok.encode_batch(TEXTS)
    emb = table(max(max(s) for s in ids) + 1)
    save_graph(tmp_path / "onnx" / "model.onnx", emb, False)
    cfg = SimpleNamespace(model=str(model), batch_size=2, onnx_dir=str(tmp_path / "onnx"))
    peer = OnnxRuntimePeer("fp32", cfg, 1)
    widths, run = [], peer.session.run
    peer.session = SimpleNamespace(
        run=lambda names, feed: widths.append(feed["input_ids"].shape[1]) or run(names, feed)
    )
    peer.encode(TEXTS)
    lengths = sorted(len(s) for s in ids)
    assert widths == [lengths[1], lengths[2]]
