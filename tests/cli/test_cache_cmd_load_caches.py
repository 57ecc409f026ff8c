"""`embedpipe cache info` shows the load-time caches; `cache clear --load-caches` empties them."""

from __future__ import annotations

from typer.testing import CliRunner

from embedpipe.cli.app import app
from embedpipe.codegen import jit
from embedpipe.runtime import weight_cache
from embedpipe.runtime.embedder import Embedder


def test_info_lists_and_clear_removes_load_caches(tiny_model_q8, tmp_path, monkeypatch):
    # kernels follow EMBEDPIPE_CACHE_DIR: load them from the suite's kernel cache, not compiled afresh
    monkeypatch.setenv(jit.CACHE_ENV, str(jit.cache_dir()))
    monkeypatch.setenv("EMBEDPIPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(weight_cache.DIR_ENV, str(tmp_path / "weights"))
    Embedder.load(tiny_model_q8.path, backend="jit")
    kernels = tmp_path / "kernels"  # a stand-in: clearing the shared kernel cache would slow every later test
    monkeypatch.setenv(jit.CACHE_ENV, str(kernels))
    kernels.mkdir()
    for name in ("a.sealed.o", "b.so", "b.so.sha256"):
        (kernels / name).write_bytes(b"x" * 1000)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0, info.output
    assert "repacked weights: 1 files" in info.output and str(tiny_model_q8.path.resolve()) in info.output
    assert "tokenizer models: 1 files" in info.output and "compiled kernels: 3 files" in info.output
    cleared = runner.invoke(app, ["cache", "clear", "--load-caches", "--yes"])
    assert cleared.exit_code == 0, cleared.output
    assert (
        "deleted 1 repacked-weight files, 1 tokenizer models, 0 GGUF offset files and 3 kernel files" in cleared.output
    )
    assert weight_cache.list_files() == [] and jit.cache_files() == []
