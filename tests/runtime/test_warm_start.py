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
