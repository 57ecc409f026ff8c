"""Model files with the defects the fuzzer found: each is one clear ModelFileError at load (or a
finite-output error), never a hang, a traceback or a NaN vector with exit 0."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from embedpipe.errors import ModelFileError
from embedpipe.runtime import model_integrity
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import GGUFModelFile
from tests.fuzz.gguf_doc import KV, GGUFDoc

P = "gemma-embedding."


@pytest.fixture
def doc(tiny_gguf) -> GGUFDoc:
    return GGUFDoc.read(tiny_gguf)


def _open(doc: GGUFDoc, tmp_path, name="m.gguf") -> Embedder:
    path = tmp_path / name
    path.write_bytes(doc.serialize())
    emb = Embedder.load(path, backend="numpy")
    emb.encode(["hello world"])
    return emb


def _expect(doc, tmp_path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        _open(doc, tmp_path)
    msg = str(info.value)
    assert len(msg) <= 300 and msg.isprintable() and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "key,vtype,value,match",
    [
        ("block_count", 4, 10**7, "block_count' is 10000000"),
        ("attention.sliding_window_pattern", 4, 0, "sliding_window_pattern' is 0"),
        ("rope.freq_base", 6, 0.0, "freq_base' is 0.0"),
        ("attention.layer_norm_rms_epsilon", 6, float("-inf"), "not a finite number"),
        ("pooling_type", 4, 2, "pooling_type' is 2, supported: 1"),
        ("attention.key_length", 6, float("nan"), "has type float, expected int"),
        ("context_length", 8, b"128", "has type str, expected int"),
    ],
)
def test_metadata_schema(doc, tmp_path, key, vtype, value, match):
    doc.kvs = [kv for kv in doc.kvs if kv.key != P + key] + [KV(P + key, vtype, value)]
    t = time.perf_counter()
    _expect(doc, tmp_path, match)
    assert time.perf_counter() - t < 30  # block_count 1e7 used to hang building 13e7 names


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("kv:tokenizer.ggml.tokens[7].len", 2**63, "runs past the end"),
        ("kv:tokenizer.ggml.scores.count", 2**33, "claims 8589934592 items"),
        ("t:token_embd.weight.dim0", 2**63, "impossible"),
        ("t:token_embd.weight.dim1", 0, "impossible"),
    ],
)
def test_counts_and_lengths_bounded_by_the_file(doc, tmp_path, field, value, match):
    buf = bytearray(doc.serialize())
    pos = doc.positions[field]
    buf[pos : pos + 8] = struct.pack("<Q", value)
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(buf))
    with pytest.raises(ModelFileError, match=match):
        GGUFModelFile(path)


def test_tensor_layout_aligned_and_not_overlapping(doc, tmp_path):
    t = next(t for t in doc.tensors if t.name == "blk.0.attn_q.weight")
    t.offset += 4
    _expect(doc, tmp_path, "not a multiple of the alignment")
    t.offset = doc.tensors[0].offset
    _expect(doc, tmp_path, "overlaps")


def test_zero_dimension_tensor(doc, tmp_path):
    doc.tensors[0].dims = []
    _expect(doc, tmp_path, "0 dimensions")


def test_half_a_dense_head_is_an_error(doc, tmp_path):
    doc.tensors = [t for t in doc.tensors if t.name != "dense_3.weight"]
    _expect(doc, tmp_path, "dense head is incomplete")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.kv("tokenizer.ggml.bos_token_id").__setattr__("value", 384), "bos_token_id 384 is outside"),
        (lambda d: d.kv("tokenizer.ggml.tokens").value.append(b"extra"), "entries for 385 tokens"),
        (
            lambda d: [
                d.kv(k).value.append(v)
                for k, v in (
                    ("tokenizer.ggml.tokens", b"x"),
                    ("tokenizer.ggml.scores", 0.0),
                    ("tokenizer.ggml.token_type", 1),
                )
            ],
            "385 tokens but token_embd",
        ),
        (lambda d: d.kv("tokenizer.ggml.tokens").value.__setitem__(200, b"\xff\xfe"), "piece 200 is not valid UTF-8"),
    ],
)
def test_tokenizer_consistency_at_load(doc, tmp_path, edit, match):
    edit(doc)
    _expect(doc, tmp_path, match)


def test_huge_binary_tensor_name_is_shortened(doc, tmp_path):
    doc.tensors[3].name = "\x00\x01" * 40000
    doc.tensors[3].ttype = 99
    msg = _expect(doc, tmp_path, "unknown type id 99")
    assert "\\x00\\x01" in msg


def test_zeroed_header_suggests_repulling(tiny_gguf, tmp_path):
    buf = bytearray(tiny_gguf.read_bytes())
    buf[8:4096] = bytes(4088)
    path = tmp_path / "zeroed.gguf"
    path.write_bytes(bytes(buf))
    with pytest.raises(ModelFileError, match="model pull --force"):
        GGUFModelFile(path)


def test_non_finite_output_is_an_error(doc, tmp_path):
    norm = next(t for t in doc.tensors if t.name == "blk.1.ffn_norm.weight")
    data = bytearray(doc.data)
    data[norm.offset : norm.offset + 4] = struct.pack("<f", float("nan"))
    doc.data = bytes(data)
    _expect(doc, tmp_path, "produced NaN or infinite values; .*model pull --force")


def test_same_size_corruption_is_caught_by_the_integrity_sidecar(tiny_gguf, tmp_path):
    path = tmp_path / "pulled.gguf"
    path.write_bytes(tiny_gguf.read_bytes())
    model_integrity.record(GGUFModelFile(path))
    GGUFModelFile(path)  # untouched: fine
    buf = bytearray(path.read_bytes())
    mf = GGUFModelFile(path)
    start = mf._parsed.data_offset + 20000
    buf[start : start + 8192 + 64] = b"\x00" * (8192 + 64)  # zeros: finite, so only the sidecar sees it
    path.write_bytes(bytes(buf))
    with pytest.raises(ModelFileError, match="changed since it was pulled"):
        GGUFModelFile(path)


def test_valid_model_still_loads_unchanged(doc, tmp_path, tiny_gguf):
    a = _open(doc, tmp_path).encode(["hello world", "bread"])
    b = Embedder.load(tiny_gguf, backend="numpy").encode(["hello world", "bread"])
    np.testing.assert_array_equal(a, b)
