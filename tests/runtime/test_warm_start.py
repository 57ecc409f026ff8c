"""Warm-start shortcuts: the cached tokenizer proto and lazy GGUF string arrays."""

from __future__ import annotations

from embedpipe.runtime import tokenizer as tokenizer_module
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.tokenizer import Tokenizer


def test_tokenizer_proto_is_cached_and_damaged_cache_is_rebuilt(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    mf = GGUFModelFile(tiny_gguf)
    text = "def add(a, b): return a + b"
    first = Tokenizer.from_gguf(mf).encode(text)
    (cached,) = (tmp_path / "tokenizers").glob("*.model")
    builds = []
    real_build = tokenizer_module.build_model_proto
    monkeypatch.setattr(tokenizer_module, "build_model_proto", lambda *a: builds.append(1) or real_build(*a))
    assert Tokenizer.from_gguf(mf).encode(text) == first and builds == []
    cached.write_bytes(b"\x00garbage")
    assert Tokenizer.from_gguf(mf).encode(text) == first and builds == [1]
    assert cached.read_bytes() != b"\x00garbage"


def test_string_arrays_read_like_lists(tiny_gguf):
    import gguf

    tokens = GGUFModelFile(tiny_gguf).get("tokenizer.ggml.tokens")
    reader = gguf.GGUFReader(tiny_gguf)
    field = reader.fields["tokenizer.ggml.tokens"]
    want = [bytes(field.parts[i]) for i in field.data]
    assert len(tokens) == len(want) and list(tokens) == want and tokens == want
    assert tokens[3] == want[3] and tokens[-1] == want[-1] and tokens[2:5] == want[2:5]


def test_tokenizer_cache_is_keyed_by_vocabulary_not_by_file(tiny_gguf, tiny_model_q8, tmp_path, monkeypatch):
    """Copies of one vocabulary (temporary test models, F32 and Q8_0) share one entry, so the
    directory does not grow by one 5 MB model per model file ever opened."""
    import shutil

    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(3):
        copy = tmp_path / f"copy{i}.gguf"
        shutil.copyfile(tiny_gguf, copy)
        Tokenizer.from_gguf(GGUFModelFile(copy))
    Tokenizer.from_gguf(GGUFModelFile(tiny_model_q8.path))
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.model"))) == 1


def test_tokenizer_cache_is_size_bounded(tmp_path):
    import os

    cache = tmp_path / "tokenizers"
    cache.mkdir()
    for i in range(5):
        path = cache / f"{i}.model"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (i, i))
    (cache / "old.model.1.tmp").write_bytes(b"x")
    os.utime(cache / "old.model.1.tmp", (0, 0))
    tokenizer_module.prune_cache(cache, 2500, keep=cache / "0.model")
    assert sorted(p.name for p in cache.iterdir()) == ["0.model", "3.model", "4.model"]


def test_string_offsets_are_remembered_and_checked(tiny_gguf, tmp_path, monkeypatch):
    """A warm open takes the remembered offsets of a string array; wrong ones are detected and
    the array is walked again, so the strings read are the same either way."""
    from embedpipe.runtime import gguf_file, gguf_parse

    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gguf_file._SavedStringIndex, "MIN_ITEMS", 1)
    want = list(GGUFModelFile(tiny_gguf).get("tokenizer.ggml.tokens"))
    (saved,) = (tmp_path / "gguf_index").glob("*.npz")
    walks = []
    real_walk = gguf_parse._Cursor._walk
    monkeypatch.setattr(gguf_parse._Cursor, "_walk", lambda self, n: walks.append(n) or real_walk(self, n))
    assert list(GGUFModelFile(tiny_gguf).get("tokenizer.ggml.tokens")) == want and walks == []
    import numpy as np

    with np.load(saved) as data:
        shifted = {k: data[k] + (1 if len(data[k]) > 1 else 0) for k in data.files}
    np.savez(saved, **shifted)
    assert list(GGUFModelFile(tiny_gguf).get("tokenizer.ggml.tokens")) == want and walks
