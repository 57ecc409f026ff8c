"""Broken model files fail early with one clear message naming the file and the problem."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from synthetic import build_tiny_model

from embedpipe.errors import ModelFileError
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import GGUFModelFile
from tests.proc_maps import resident_kib


def _load(path):
    return Embedder.load(path, backend="numpy")


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        _load(tmp_path / "absent.gguf")


def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFileError, match="wrong magic .not a GGUF file"):
        _load(bad)


@pytest.mark.parametrize("keep", [10, 200, 0.5, 0.999])
def test_truncated(tiny_gguf, tmp_path, keep):
    data = tiny_gguf.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated|not a readable GGUF") as info:
        _load(bad)
    assert str(bad) in str(info.value)


def test_missing_tensor(tmp_path):
    model = build_tiny_model(tmp_path, mutate=lambda w: w.pop("blk.1.ffn_up.weight"))
    with pytest.raises(ModelFileError, match="missing tensor blk.1.ffn_up.weight"):
        _load(model.path)


def test_wrong_shape(tmp_path):
    def shrink(w):
        w["blk.0.attn_k.weight"] = w["blk.0.attn_k.weight"][:16]

    model = build_tiny_model(tmp_path, mutate=shrink)
    with pytest.raises(ModelFileError, match=r"blk.0.attn_k.weight has shape \(16, 64\)"):
        _load(model.path)


def _patch_tensor_type(path, name, type_id):
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == name)
    n_dims = len(tensor.shape)
    pos = tensor.field.offset + 8 + len(name.encode()) + 4 + 8 * n_dims
    del reader
    with open(path, "r+b") as fh:
        fh.seek(pos)
        fh.write(struct.pack("<I", type_id))


def test_unknown_quant_type(tiny_gguf, tmp_path):
    bad = tmp_path / "unknown-type.gguf"
    shutil.copy(tiny_gguf, bad)
    _patch_tensor_type(bad, "blk.0.attn_q.weight", 77)
    with pytest.raises(ModelFileError, match="blk.0.attn_q.weight has unknown type id 77"):
        _load(bad)


def test_unsupported_quant_type(tmp_path):
    model = build_tiny_model(tmp_path, qtype=gguf.GGMLQuantizationType.Q5_1)
    with pytest.raises(ModelFileError, match="Q5_1 is not supported"):
        _load(model.path)


def test_wrong_architecture(tmp_path):
    model = build_tiny_model(tmp_path, cfg=None)
    mf = GGUFModelFile(model.path)
    assert mf.architecture == "gemma-embedding"
    raw = bytearray(model.path.read_bytes())
    at = raw.find(b"gemma-embedding")
    raw[at : at + len(b"gemma-embedding")] = b"gemma-embeddinX"
    bad = tmp_path / "arch.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="architecture 'gemma-embeddinX' is not supported"):
        _load(bad)


def test_tensor_views_are_zero_copy(tiny_model_q8):
    mf = GGUFModelFile(tiny_model_q8.path)
    t = mf.tensors["blk.0.ffn_gate.weight"]
    assert t.qtype == gguf.GGMLQuantizationType.Q8_0 and t.shape == (96, 64)
    assert t.rows().shape == (96, 64 // 32 * 34)
    assert isinstance(t.raw.base, np.memmap) or isinstance(t.raw, np.memmap) or t.raw.base is not None


@pytest.fixture
def spread_gguf(tmp_path):
    """A file whose small tensors lie 4 MB past the header, beyond any folio the header shares."""
    path = tmp_path / "spread.gguf"
    writer = gguf.GGUFWriter(str(path), "embedpipe-test")
    rng = np.random.default_rng(0)
    writer.add_tensor("big", rng.standard_normal(1 << 20).astype(np.float32))
    writer.add_tensor("norm", rng.standard_normal(768).astype(np.float32))
    writer.add_tensor("half", rng.standard_normal(64).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
def test_read_tensor_copies_without_mapping_pages(spread_gguf):
    mf = GGUFModelFile(spread_gguf)
    before = resident_kib(spread_gguf)
    copies = {name: mf.read_tensor(name) for name in ("norm", "half")}
    assert resident_kib(spread_gguf) == before
    for name, copy in copies.items():
        view = mf.tensors[name]
        assert (copy.name, copy.qtype, copy.shape) == (view.name, view.qtype, view.shape)
        assert copy.raw.flags.writeable and copy.raw.base is not view.raw.base
        assert np.array_equal(copy.raw, view.raw)  # reads through the mapping: the control
    assert resident_kib(spread_gguf) > before


def test_read_tensor_of_a_file_cut_after_open(spread_gguf):
    mf = GGUFModelFile(spread_gguf)
    size = spread_gguf.stat().st_size
    with open(spread_gguf, "r+b") as fh:
        fh.truncate(size - 64)
    with pytest.raises(ModelFileError, match="tensor half ends past the end of the file"):
        mf.read_tensor("half")
    with pytest.raises(KeyError):
        mf.read_tensor("absent")
