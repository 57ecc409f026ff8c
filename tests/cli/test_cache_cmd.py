"""`embedpipe cache info|clear`: --cache-dir and -m mean the same for every cache, `info` only
reads, and a confirmation nobody can answer deletes nothing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from embedpipe.cli.app import app
from embedpipe.cli.errors import run_cli
from embedpipe.codegen import jit
from embedpipe.pipeline.cache import CachedRow, EmbeddingCache, cache_key
from embedpipe.runtime import registry, store, weight_cache
from embedpipe.runtime.gguf_file import GGUFModelFile, file_sha256
from embedpipe.runtime.weight_cache_file import CachedArrays


def _cli(args, capsys, monkeypatch, stdin: str | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = run_cli(app, [str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _one_error(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _weights(model: Path, directory: Path) -> Path:
    """A real repacked-weight cache file of `model` (one small array) in `directory`."""
    cache = weight_cache.WeightCache(GGUFModelFile(model), "test-identity", directory)
    cache.put("w", 0, (4,), CachedArrays("f32", (np.arange(4, dtype=np.float32),)))
    written = cache.commit()
    assert written is not None
    return written


def _load_caches(root: Path, models: list[Path]) -> dict[str, list[Path]]:
    (root / "tokenizers").mkdir(parents=True)
    (root / "kernels").mkdir()
    (root / "gguf_index").mkdir()
    tok = root / "tokenizers" / "v.model"
    tok.write_bytes(b"t" * 100)
    offsets = root / "gguf_index" / "0123.npz"
    offsets.write_bytes(b"o" * 100)
    kernels = [root / "kernels" / "a.sealed.o", root / "kernels" / "a.so"]
    for k in kernels:
        k.write_bytes(b"k" * 100)
    return {
        "weights": [_weights(m, root / "weights") for m in models],
        "tokenizers": [tok],
        "gguf_index": [offsets],
        "kernels": kernels,
    }


def _fill(path: Path, model_sha: str, n: int = 3) -> None:
    cache = EmbeddingCache(path)
    row = CachedRow([(0, 3)], [5], np.ones((1, 8), np.float32), 3, False)
    cache.put_many([(cache_key(model_sha, "document", 8, None, f"t{i}", "s"), model_sha, 8, row) for i in range(n)])
    cache.close()


def _models(cache: Path) -> dict[str, int]:
    cache = EmbeddingCache(cache)
    try:
        return {g.model: g.entries for g in cache.summary()}
    finally:
        cache.close()


@pytest.fixture()
def roots(tmp_path, monkeypatch):
    """An environment cache root (with its own weight and kernel dirs) and another root passed
    with --cache-dir; every cache here is a temporary directory."""
    env = tmp_path / "env"
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(env))
    monkeypatch.setenv(weight_cache.DIR_ENV, str(env / "weights"))
    monkeypatch.setenv(jit.CACHE_ENV, str(env / "kernels"))
    return env, tmp_path / "other"


def test_load_caches_clear_honours_cache_dir_and_model(roots, tiny_model, tiny_model_q8, capsys, monkeypatch):
    env, other = roots
    a, b = tiny_model.path, tiny_model_q8.path
    in_env = _load_caches(env, [a, b])
    in_other = _load_caches(other, [a, b])
    everything = [p for group in (in_env, in_other) for paths in group.values() for p in paths]

    # a 3-character prefix is refused, as by a plain clear, before anything is deleted
    code, _, err = _cli(
        ["cache", "clear", "--load-caches", "-m", "5cc", "-y", "--cache-dir", other], capsys, monkeypatch
    )
    assert code == 2
    _one_error(err, "at least 4")
    assert all(p.exists() for p in everything)

    # -m: only that model's repacked weights, only under --cache-dir; shared caches are kept
    code, out, _ = _cli(["cache", "clear", "--load-caches", "-m", a, "-y", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0 and "deleted 1 repacked-weight files" in out and "kept" in out
    assert [p.exists() for p in in_other["weights"]] == [False, True]
    assert all(p.exists() for p in in_other["tokenizers"] + in_other["gguf_index"] + in_other["kernels"])
    assert all(p.exists() for paths in in_env.values() for p in paths)

    # a SHA-256 prefix names the model as well
    prefix = file_sha256(b)[:8]
    code, out, _ = _cli(
        ["cache", "clear", "--load-caches", "-m", prefix, "-y", "--cache-dir", other], capsys, monkeypatch
    )
    assert code == 0 and "deleted 1 repacked-weight files" in out
    assert not any(p.exists() for p in in_other["weights"])

    # no -m: everything under --cache-dir, nothing under the environment's root
    code, out, _ = _cli(["cache", "clear", "--load-caches", "-y", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0 and "0 repacked-weight files, 1 tokenizer models, 1 GGUF offset files and 2 kernel files" in out
    assert not any(p.exists() for paths in in_other.values() for p in paths)
    assert all(p.exists() for paths in in_env.values() for p in paths)


def test_info_lists_the_load_caches_of_cache_dir(roots, tiny_model, capsys, monkeypatch):
    env, other = roots
    _load_caches(env, [])
    other.mkdir()
    (other / "tokenizers").mkdir()
    for i in range(3):
        (other / "tokenizers" / f"{i}.model").write_bytes(b"t")
    _weights(tiny_model.path, other / "weights")
    code, out, _ = _cli(["cache", "info", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0
    assert f"{other / 'weights'}  repacked weights: 1 files" in out
    assert f"{other / 'tokenizers'}  tokenizer models: 3 files" in out
    assert f"{other / 'kernels'}  compiled kernels: 0 files" in out
    assert f"{other / 'gguf_index'}  GGUF string offsets: 0 files" in out
    assert str(env) not in out


def test_info_creates_nothing(roots, capsys, monkeypatch):
    _, other = roots
    typo = other / "typo" / "path"
    code, out, err = _cli(["cache", "info", "--cache-dir", typo], capsys, monkeypatch)
    assert code == 1 and out == ""
    _one_error(err, str(typo), "no such directory")
    assert not other.exists()

    other.mkdir()
    code, out, _ = _cli(["cache", "info", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0 and "nothing cached" in out
    assert list(other.iterdir()) == []

    code, out, err = _cli(["cache", "clear", "-y", "--cache-dir", typo], capsys, monkeypatch)
    assert code == 1
    _one_error(err, str(typo))
    code, out, _ = _cli(["cache", "clear", "-y", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0 and "nothing to delete" in out
    assert list(other.iterdir()) == []


def test_info_reads_an_existing_cache(roots, capsys, monkeypatch):
    _, other = roots
    _fill(other / "embeddings.sqlite", "cd" * 32, 4)
    before = sorted(p.name for p in other.iterdir())
    code, out, _ = _cli(["cache", "info", "--cache-dir", other], capsys, monkeypatch)
    assert code == 0 and "cdcdcdcdcdcdcdcd     8         4" in out
    assert sorted(p.name for p in other.iterdir()) == before


def test_clear_model_takes_a_model_name_or_path(roots, tiny_model, capsys, monkeypatch):
    _, other = roots
    sha = file_sha256(tiny_model.path)
    db = other / "embeddings.sqlite"
    _fill(db, sha)
    _fill(db, "ee" * 32)
    code, out, _ = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", tiny_model.path], capsys, monkeypatch)
    assert code == 0 and "deleted 3 entries" in out
    assert _models(db) == {"ee" * 32: 3}

    # a registered name is resolved to its cached GGUF, never downloaded
    def no_download(*args, **kwargs):
        raise AssertionError("cache clear must not download a model")

    monkeypatch.setattr(registry, "ensure", no_download)
    monkeypatch.setattr(store, "ensure_model", no_download)
    monkeypatch.setattr(store, "cached_model_path", lambda quant, spec: None)
    code, _, err = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", "all-minilm-l6-v2"], capsys, monkeypatch)
    assert code == 1
    _one_error(err, "all-minilm-l6-v2", "not downloaded")
    assert _models(db) == {"ee" * 32: 3}

    _fill(db, sha)
    wanted = registry.lookup("all-minilm-l6-v2").spec
    monkeypatch.setattr(store, "cached_model_path", lambda quant, spec: tiny_model.path if spec == wanted else None)
    code, out, _ = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", "all-minilm-l6-v2"], capsys, monkeypatch)
    assert code == 0 and "deleted 3 entries" in out
    assert _models(db) == {"ee" * 32: 3}

    # SHA-256 prefixes still work, with the same minimum length
    code, _, err = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", "eee"], capsys, monkeypatch)
    assert code == 2
    _one_error(err, "registered model name", "at least 4")
    code, _, err = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", other / "no.gguf"], capsys, monkeypatch)
    assert code == 1
    _one_error(err, "no.gguf", "no such model file")
    code, out, _ = _cli(["cache", "clear", "-y", "--cache-dir", other, "-m", "EEEE"], capsys, monkeypatch)
    assert code == 0 and "deleted 3 entries" in out


@pytest.mark.parametrize("load_caches", [False, True])
def test_confirmation_without_an_answer_aborts(roots, capsys, monkeypatch, load_caches):
    _, other = roots
    db = other / "embeddings.sqlite"
    _fill(db, "ab" * 32)
    kernel = other / "kernels" / "a.so"
    kernel.parent.mkdir()
    kernel.write_bytes(b"k")
    args = ["cache", "clear", "--cache-dir", other] + (["--load-caches"] if load_caches else [])
    code, _, err = _cli(args, capsys, monkeypatch, stdin="")
    assert code == 1
    _one_error(err, "aborted", "-y/--yes")
    assert "interrupted" not in err
    assert _models(db) == {"ab" * 32: 3} and kernel.exists()

    code, _, err = _cli(args, capsys, monkeypatch, stdin="n\n")
    assert code == 1
    _one_error(err, "aborted")
    assert _models(db) == {"ab" * 32: 3} and kernel.exists()

    code, out, _ = _cli(args, capsys, monkeypatch, stdin="y\n")
    assert code == 0 and "deleted" in out
    assert (_models(db) == {}) if not load_caches else not kernel.exists()
