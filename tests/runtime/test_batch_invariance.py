"""A text's vector must not depend on what else shares its batch: bit-identical alone, in
batches of 7 and 32, and beside a text of ~2 000 tokens (issue 16 item 5)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from synthetic import TinyConfig, build_tiny_model

from embedpipe.runtime.embedder import Embedder

SHORT = "where do vectors land when texts are similar?"
OTHERS = [f"another text, number {i}, with {'some ' * (i % 9)}words" for i in range(40)]


def _rows_alone_and_batched(emb: Embedder, long_text: str) -> dict[str, np.ndarray]:
    """The raw (pre-normalization) vector of SHORT in each batch composition."""
    ids = emb.tokenize([SHORT, *OTHERS, long_text], task="document", truncate=True)
    short, others, long_ids = ids[0], ids[1:-1], ids[-1]
    embed = emb.model.embed
    return {
        "alone": embed([short])[0],
        "batch of 7": embed([*others[:3], short, *others[3:6]])[3],
        "batch of 32": embed([*others[:31], short])[31],
        "beside a long text": embed([long_ids, short])[1],
        "long text first": embed([short, long_ids, *others[:2]])[0],
    }


def _assert_bit_identical(rows: dict[str, np.ndarray]) -> None:
    alone = rows["alone"]
    for name, row in rows.items():
        assert row.dtype == np.float32
        diff = float(np.abs(row - alone).max())
        assert np.array_equal(row.view(np.uint32), alone.view(np.uint32)), f"{name}: differs by up to {diff:g}"


@pytest.fixture(scope="module")
def tiny_q8_long_context(tmp_path_factory):
    cfg = TinyConfig(context=2048, sliding_window=64)
    return build_tiny_model(tmp_path_factory.mktemp("tiny_long"), qtype=gguf.GGMLQuantizationType.Q8_0, cfg=cfg)


@pytest.mark.parametrize("threads", [1, 2])
def test_tiny_model_vectors_are_bit_identical_in_any_batch(tiny_q8_long_context, threads):
    emb = Embedder.load(tiny_q8_long_context.path, backend="jit", threads=threads)
    long_text = "vectors land close together when texts are similar. " * 200
    assert len(emb.tokenize([long_text], task="document", truncate=True)[0]) > 1500
    _assert_bit_identical(_rows_alone_and_batched(emb, long_text))


def test_encode_is_bit_identical_across_batch_sizes(tiny_q8_long_context):
    emb = Embedder.load(tiny_q8_long_context.path, backend="jit", threads=2)
    texts = [SHORT, *OTHERS[:31]]
    one_by_one = np.stack([emb.encode([t], task="document")[0] for t in texts[:7]])
    for batch_size in (1, 7, 32):
        got = emb.encode(texts, task="document", batch_size=batch_size)[:7]
        assert np.array_equal(got, one_by_one), batch_size


@pytest.mark.model
def test_real_model_vectors_are_bit_identical_in_any_batch():
    from embedpipe.runtime.store import ensure_model

    emb = Embedder.load(ensure_model("q8_0"), backend="jit")
    long_text = "Embeddings map each text to a point so that similar texts land close together. " * 120
    assert len(emb.tokenize([long_text], task="document", truncate=True)[0]) >= 1900
    _assert_bit_identical(_rows_alone_and_batched(emb, long_text))


@pytest.mark.parametrize("batch_size", [0, -3])
def test_a_batch_size_below_one_is_refused(tiny_model, batch_size):
    from embedpipe.errors import ArgumentError

    emb = Embedder.load(tiny_model.path, backend="numpy")
    with pytest.raises(ArgumentError, match="batch_size must be positive"):
        emb.encode(["a", "b"], batch_size=batch_size)


def test_encode_takes_any_iterable_of_texts_and_refuses_the_rest(tiny_model):
    from embedpipe.errors import EmbedpipeError

    emb = Embedder.load(tiny_model.path, backend="numpy")
    want = emb.encode(["a", "b"])
    np.testing.assert_array_equal(emb.encode(t for t in ("a", "b")), want)  # a generator, read once
    np.testing.assert_array_equal(emb.encode(np.array(["a", "b"])), want)
    for texts, match in ((None, "got NoneType"), ("ab", "not a single string"), (b"ab", "not a single string")):
        with pytest.raises(EmbedpipeError, match=match):
            emb.encode(texts)
    with pytest.raises(EmbedpipeError, match="task must be a string"):
        emb.encode(["a"], task=None)


def test_threads_below_one_are_refused_not_taken_as_the_numpy_backend(tiny_model, tmp_path):
    from embedpipe.errors import ArgumentError, ModelFileError

    with pytest.raises(ArgumentError, match="threads must be >= 1, got 0"):  # auto fell back to numpy
        Embedder.load(tiny_model.path, threads=0)
    with pytest.raises(ModelFileError, match="is a directory, not a GGUF file"):
        Embedder.load(tmp_path)
