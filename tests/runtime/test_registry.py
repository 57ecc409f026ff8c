"""The model registry: the table, `--model` resolution, `embedpipe model list|path`, and (real,
marked) pulling all-MiniLM-L6-v2 twice, and repairing a damaged cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.errors import EmbedpipeError, ModelFileError
from embedpipe.runtime import prompts, registry, store
from embedpipe.runtime.mirror import SingleWheelSource, SplitZipSource


def test_every_entry_is_complete() -> None:
    assert registry.DEFAULT_MODEL == "embeddinggemma-300m" and registry.DEFAULT_MODEL in registry.MODELS
    for entry in registry.MODELS.values():
        assert entry.pins and all(len(h) == 64 for h in entry.pins.values())
        assert "model.safetensors" in entry.pins and entry.licence
        assert entry.prompts in prompts.SCHEMES and entry.pooling in ("mean", "cls")
        assert entry.matryoshka_dims == tuple(sorted(entry.matryoshka_dims, reverse=True))
        assert hasattr(entry.source, "fetch_archive")
    assert isinstance(registry.MODELS["all-minilm-l6-v2"].source, SingleWheelSource)
    mpnet = registry.MODELS["all-mpnet-base-v2"].source
    assert isinstance(mpnet, SplitZipSource) and len(mpnet.parts) == 5
    assert registry.MODELS["all-minilm-l6-v2"].pins["model.safetensors"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    # the default model keeps its cache location
    assert registry.MODELS[registry.DEFAULT_MODEL].spec == store.DEFAULT_SPEC


def test_resolve_model(tiny_gguf, monkeypatch) -> None:
    assert registry.resolve_model(tiny_gguf) == tiny_gguf
    assert registry.resolve_model(str(tiny_gguf)) == tiny_gguf
    calls = []
    monkeypatch.setattr(
        registry, "ensure", lambda name, quant="q8_0", progress=None: calls.append((name, quant)) or tiny_gguf
    )
    registry.resolve_model("all-minilm-l6-v2")
    registry.resolve_model("All-MiniLM-L6-v2:F32")
    registry.resolve_model(None)
    assert calls == [("all-minilm-l6-v2", "q8_0"), ("all-minilm-l6-v2", "f32"), ("embeddinggemma-300m", "q8_0")]
    with pytest.raises(ModelFileError, match="no such model file"):
        registry.resolve_model("/nowhere/model.gguf")
    with pytest.raises(EmbedpipeError, match="neither a GGUF file nor a registered model"):
        registry.resolve_model("bert-large-nonsense")


def test_unknown_quant_in_name_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path))
    with pytest.raises(EmbedpipeError, match="unknown quant"):
        registry.resolve_model("all-minilm-l6-v2:q3_x")


def test_cli_model_list_and_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "empty"))
    runner = CliRunner()
    res = runner.invoke(app, ["model", "list"])
    assert res.exit_code == 0 and all(name in res.output for name in registry.MODELS)
    res = runner.invoke(app, ["model", "path", "all-mpnet-base-v2"])
    assert res.exit_code != 0 and "embedpipe model pull all-mpnet-base-v2" in str(res.exception)
    res = runner.invoke(app, ["model", "path", "nope"])
    assert res.exit_code != 0 and "unknown model" in str(res.exception)
    res = runner.invoke(app, ["model", "path", str(tmp_path / "m.gguf")])
    assert res.exit_code != 0 and "is a file path; this takes a registered model name" in str(res.exception)
    # NAME:QUANT as every --model takes it
    res = runner.invoke(app, ["model", "path", "all-mpnet-base-v2:F16"])
    assert res.exit_code != 0 and "embedpipe model pull all-mpnet-base-v2 --quant f16" in str(res.exception)
    res = runner.invoke(app, ["model", "path", "all-mpnet-base-v2:f16", "--quant", "q8_0"])
    assert res.exit_code != 0 and "names the quant f16, but --quant says q8_0" in str(res.exception)


def test_named_quant_reads_name_and_quant_as_model_options_do() -> None:
    default = registry.MODELS[registry.DEFAULT_MODEL]
    assert registry.named_quant(None) == (default, registry.DEFAULT_QUANT)
    assert registry.named_quant("all-minilm-l6-v2:F32")[1] == "f32"
    assert registry.named_quant("all-minilm-l6-v2", "f16")[1] == "f16"
    assert registry.named_quant("all-minilm-l6-v2:f16", "F16")[1] == "f16"
    with pytest.raises(EmbedpipeError, match="names the quant f32, but --quant says q4_0"):
        registry.named_quant("all-minilm-l6-v2:f32", "q4_0")
    with pytest.raises(EmbedpipeError, match="unknown model"):
        registry.named_quant("bogus:f32")


@pytest.mark.model
def test_real_pull_twice_is_a_noop_and_damage_is_repaired(tmp_path, monkeypatch) -> None:
    """all-MiniLM-L6-v2 from the mirror (EMBEDPIPE_WHEEL_DIR if set, else pip from the index)."""
    entry = registry.lookup("all-minilm-l6-v2")
    path = registry.ensure(entry.name, "q8_0", progress=False)  # the real cache, pulled once
    # work on a copy so the shared cache stays intact
    cache = tmp_path / "cache"
    shutil.copytree(store.model_dir(entry.spec), cache / "models" / entry.name)
    monkeypatch.setenv(store.CACHE_ENV, str(cache))
    path = store.gguf_path("q8_0", entry.spec)
    assert store.cached_model_path("q8_0", entry.spec) == path
    stamp = path.stat().st_mtime_ns
    assert store.pull("q8_0", progress=False, spec=entry.spec, metadata=entry.metadata) == path
    assert path.stat().st_mtime_ns == stamp  # second pull: nothing rebuilt
    with open(path, "r+b") as fh:  # same size, flipped bytes: only a re-hash sees it
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\xff" * 64)
    assert store.gguf_problem("q8_0", entry.spec, verify=True) is not None
    assert store.pull("q8_0", verify=True, progress=False, spec=entry.spec, metadata=entry.metadata) == path
    assert store.gguf_problem("q8_0", entry.spec, verify=True) is None
    checkout = store.hf_checkout_dir(entry.spec)
    os.truncate(checkout / "tokenizer.json", 10)
    assert store.checkout_problem(entry.spec) == "tokenizer.json has the wrong size"
    assert store.pull("q8_0", progress=False, spec=entry.spec, metadata=entry.metadata) == path
    assert store.checkout_problem(entry.spec, verify=True) is None
    assert (Path(checkout) / "vocab.txt").is_file()


def test_prompted_tasks_follow_each_convention() -> None:
    assert prompts.SCHEMES["none"].prompted_tasks() == []
    gemma = prompts.SCHEMES["embeddinggemma"].prompted_tasks()
    assert "document" in gemma and "query" in gemma and "none" not in gemma
    bge = prompts.SCHEMES["bge-en"].prompted_tasks()
    assert "query" in bge and "sentence_similarity" not in bge and "document" not in bge
