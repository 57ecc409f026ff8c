"""A model that is not the recorded one is refused before it is loaded (and before it is hashed
when its SHA-256 or its size already decides)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from embedpipe.runtime import embedder, gguf_file
from embedpipe.runtime.gguf_file import file_sha256
from embedpipe.runtime.recorded_model import ModelMismatchError, open_embedder


@dataclass
class Record:
    model_sha256: str
    model_path: str


@pytest.fixture()
def two_models(tiny_gguf, tiny_model_q8, tmp_path):
    """Copies of two different models (A made the vectors; B is passed with --model)."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    shutil.copyfile(tiny_gguf, a)
    shutil.copyfile(tiny_model_q8.path, b)
    return a, b


@pytest.fixture()
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was opened")

    monkeypatch.setattr(embedder.Embedder, "load", refuse)
    monkeypatch.setattr(gguf_file.GGUFModelFile, "__init__", refuse)


def _no_hashing(monkeypatch):
    def refuse(path):
        raise AssertionError(f"{path} was hashed")

    monkeypatch.setattr(gguf_file, "file_sha256", refuse)


def test_known_mismatch_is_refused_without_loading_or_hashing(two_models, nothing_loads, monkeypatch):
    a, b = two_models
    record = Record(file_sha256(a), str(a))
    file_sha256(b)  # B's SHA-256 is remembered beside it
    _no_hashing(monkeypatch)
    with pytest.raises(ModelMismatchError, match="SHA-256") as err:
        open_embedder(record, b, backend="numpy")
    assert str(b) in str(err.value) and "pass allow_model_mismatch to use it" in str(err.value)
    assert "pass --allow-model-mismatch to use it" in err.value.cli_message()


def test_size_decides_without_hashing(two_models, nothing_loads, monkeypatch):
    a, b = two_models
    assert a.stat().st_size != b.stat().st_size
    record = Record(file_sha256(a), str(a))
    _no_hashing(monkeypatch)
    with pytest.raises(ModelMismatchError, match="size"):
        open_embedder(record, b, backend="numpy")


def test_unknown_model_is_hashed_but_never_loaded(two_models, nothing_loads, tmp_path):
    a, b = two_models
    record = Record(file_sha256(a), str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelMismatchError, match="SHA-256"):
        open_embedder(record, b, backend="numpy")


def test_matching_model_loads_and_is_not_hashed_again(two_models, monkeypatch):
    a, _ = two_models
    record = Record(file_sha256(a), str(a))
    _no_hashing(monkeypatch)
    emb = open_embedder(record, None, backend="numpy")
    assert emb.model_sha256 == record.model_sha256


def test_mismatch_allowed_when_asked(two_models):
    a, b = two_models
    emb = open_embedder(Record(file_sha256(a), str(a)), b, allow_mismatch=True, backend="numpy")
    assert emb.model_path == str(b)
