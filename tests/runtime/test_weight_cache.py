"""The on-disk repacked-weight cache: keyed by the model file, verified, rebuilt when damaged."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from embedpipe.codegen import jit, library
from embedpipe.runtime import weight_cache, weight_cache_file
from embedpipe.runtime.backends import NumpyBackend
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import GGUFModelFile
from tests.proc_maps import vm_flags

TEXTS = ["a short query", "def add(a, b): return a + b", "the quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture()
def model(tiny_model_q8, tmp_path, monkeypatch):
    """A private copy of the tiny Q8_0 model (tests change its bytes and mtime) and an empty cache."""
    monkeypatch.setenv(weight_cache.DIR_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv(jit.CACHE_ENV, str(jit.cache_dir()))  # kernels follow EMBEDPIPE_CACHE_DIR: keep the suite's
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    shutil.copyfile(tiny_model_q8.path, path)
    return path


@pytest.fixture()
def repacks(monkeypatch):
    """Counts the weights repacked (not served from the cache), JIT and numpy alike."""
    calls: list[str] = []
    real_jit = library.KernelLibrary.prepare_matmul
    real_np = NumpyBackend.prepare

    def jit(self, qtype, raw, n, k):
        calls.append("jit")
        return real_jit(self, qtype, raw, n, k)

    def numpy_prepare(self, tensor):
        if self.weight_cache is not None and self._cached(tensor) is None:
            calls.append("numpy")
        return real_np(self, tensor)

    monkeypatch.setattr(library.KernelLibrary, "prepare_matmul", jit)
    monkeypatch.setattr(NumpyBackend, "prepare", numpy_prepare)
    return calls


def _encode(path) -> np.ndarray:
    return Embedder.load(path, backend="jit").encode(TEXTS, truncate=True)


def _cache_files(path) -> list:
    return sorted(path.parent.joinpath("weights").glob("*.weights"))


def _uncached(path, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as mp:
        mp.setenv(weight_cache.ENABLE_ENV, "0")
        return _encode(path)


def test_second_load_maps_the_cache_and_gives_identical_vectors(model, repacks, monkeypatch):
    reference = _uncached(model, monkeypatch)
    repacks.clear()
    first = _encode(model)
    assert repacks and len(_cache_files(model)) == 1
    repacks.clear()
    emb = Embedder.load(model, backend="jit")
    assert repacks == [] and emb.backend.weight_cache.hits > 0
    np.testing.assert_array_equal(emb.encode(TEXTS), reference)
    np.testing.assert_array_equal(first, reference)


def test_changed_mtime_or_size_rebuilds_and_drops_the_stale_file(model, repacks):
    _encode(model)
    (old,) = _cache_files(model)
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    repacks.clear()
    _encode(model)
    assert repacks and _cache_files(model) != [old] and len(_cache_files(model)) == 1
    with open(model, "ab") as fh:  # trailing bytes: a valid GGUF of another size
        fh.write(b"\0" * 64)
    repacks.clear()
    _encode(model)
    assert repacks and len(_cache_files(model)) == 1


def test_same_size_same_mtime_edit_misses_the_cache(model, repacks, monkeypatch):
    """A one-byte edit with the mtime put back still changes the ctime: the cache is not used."""
    _encode(model)
    st = model.stat()
    mf = GGUFModelFile(model)
    offset = mf.tensors["blk.0.ffn_up.weight"].raw.ctypes.data - np.frombuffer(mf._parsed.mm, np.uint8).ctypes.data
    del mf
    with open(model, "r+b") as fh:  # first block of a weight: a new scale, then new quants
        fh.seek(offset)
        fh.write(np.float16(0.5).tobytes() + bytes(range(1, 33)))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model.stat().st_size == st.st_size and model.stat().st_mtime_ns == st.st_mtime_ns
    repacks.clear()
    got = _encode(model)
    assert repacks
    np.testing.assert_array_equal(got, _uncached(model, monkeypatch))


def test_stale_cache_under_a_matching_stamp_is_caught_by_a_known_fingerprint(model, repacks, monkeypatch, caplog):
    """Where the model's fingerprint is computed anyway (a pulled model with an integrity sidecar),
    a cache written for other bytes is refused even if its stamp matches."""
    _encode(model)
    monkeypatch.setattr(weight_cache.model_integrity, "known_fingerprint_digest", lambda mf: "0" * 64)
    repacks.clear()
    with caplog.at_level(logging.WARNING, logger="embedpipe.runtime.weight_cache"):
        _encode(model)
    assert repacks and "changed since" in caplog.text


def test_warm_load_does_not_read_the_model_for_its_fingerprint(model, monkeypatch):
    """Without an integrity sidecar, a warm start maps the cache without sampling the model."""
    _encode(model)
    sampled: list[int] = []
    real = weight_cache.model_integrity._crc
    monkeypatch.setattr(weight_cache.model_integrity, "_crc", lambda *a: sampled.append(1) or real(*a))
    emb = Embedder.load(model, backend="jit")
    assert emb.backend.weight_cache.hits > 0 and sampled == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "empty"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(model, repacks, monkeypatch, caplog, damage):
    reference = _encode(model)
    (path,) = _cache_files(model)
    data = bytearray(path.read_bytes())
    if damage == "flip":  # one byte of packed weights
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) - 4096]
    elif damage == "header":
        data[30] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    repacks.clear()
    with caplog.at_level(logging.WARNING, logger="embedpipe.runtime.weight_cache"):
        got = _encode(model)
    assert repacks and "damaged" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(got, reference)
    repacks.clear()
    np.testing.assert_array_equal(_encode(model), reference)
    assert repacks == []  # the rebuilt file serves again


def test_unwritable_cache_only_costs_the_repack(model, repacks, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(weight_cache.DIR_ENV, str(blocker / "weights"))
    np.testing.assert_array_equal(_encode(model), _uncached(model, monkeypatch))


def test_listing_clear_and_size_bound(model, tmp_path, monkeypatch):
    _encode(model)
    other = tmp_path / "other.gguf"
    shutil.copyfile(model, other)
    _encode(other)
    files = weight_cache.list_files()
    assert len(files) == 2 and {f.model for f in files} == {str(model.resolve()), str(other.resolve())}
    assert files[0].model == str(other.resolve())  # most recently used first
    weight_cache.prune(weight_cache.weights_dir(), files[0].bytes, keep=files[0].path)
    assert [f.path for f in weight_cache.list_files()] == [files[0].path]
    assert weight_cache.clear() == (1, files[0].bytes) and weight_cache.list_files() == []


def test_bert_models_use_the_same_cache(tmp_path, repacks, monkeypatch):
    """BERT prepares through the same backend: its second load repacks nothing (widened and
    fused weights included) and gives the same vectors."""
    from embedpipe.runtime.convert import convert_checkout
    from tests.runtime.bert_checkout_builder import build_bert_checkout

    monkeypatch.setenv(weight_cache.DIR_ENV, str(tmp_path / "weights"))
    path = convert_checkout(build_bert_checkout(tmp_path / "bert"), tmp_path / "bert-q8_0.gguf", "q8_0")
    reference = _uncached(path, monkeypatch)
    _encode(path)
    repacks.clear()
    np.testing.assert_array_equal(_encode(path), reference)
    assert repacks == []


@pytest.mark.skipif(
    not (hasattr(os, "posix_fadvise") and os.path.exists("/sys/kernel/mm/transparent_hugepage")),
    reason="needs Linux with transparent huge pages",
)
def test_mapped_cache_asks_for_huge_pages(tmp_path):
    """The weights are streamed once per forward pass: the mapping carries the huge-page advice."""
    path = tmp_path / "w.weights"
    path.write_bytes(bytes(range(256)) * 16384)
    data = weight_cache_file.map_file(path)
    assert data[:256].tolist() == list(range(256)) and len(data) == 256 * 16384
    assert "hg" in vm_flags(data.ctypes.data)
