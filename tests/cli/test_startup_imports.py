"""What a short command imports: a vector-only search loads neither the GGUF reader nor pyarrow
nor the matmul library, and the CLI's option parsing never loads pydantic (start-up time itself
is measured by `embedpipe bench startup`, not asserted here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from embedpipe.indexes import build_index

HEAVY = ("gguf", "pyarrow", "pydantic", "embedpipe.codegen.library", "embedpipe.pipeline.job")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m in {HEAVY!r}))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_vector_search_through_the_cli_imports_nothing_heavy(tmp_path):
    rng = np.random.default_rng(0)
    build_index(rng.standard_normal((20, 16)).astype(np.float32), [f"d{i}" for i in range(20)]).save(tmp_path / "a.idx")
    np.save(tmp_path / "q.npy", rng.standard_normal((2, 16)).astype(np.float32))
    code = (
        "from embedpipe.cli.app import app\nfrom embedpipe.cli.errors import run_cli\n"
        f"assert run_cli(app, ['search', {str(tmp_path / 'a.idx')!r}, '--vectors', {str(tmp_path / 'q.npy')!r},"
        " '-k', '3', '--json']) == 0"
    )
    assert _loaded_after(code) == []


def test_codegen_names_load_on_first_use():
    assert _loaded_after("import embedpipe.codegen, embedpipe.codegen.topk") == []
    assert "embedpipe.codegen.library" in _loaded_after("from embedpipe.codegen import get_kernel_library")


def test_model_path_modules_do_not_import_gguf():
    """Opening and running a model needs our own GGUF parser and type table only: gguf (and
    the YAML it pulls in) is for conversion and the reference dequantizers."""
    code = (
        "import embedpipe.runtime.embedder, embedpipe.runtime.backend_jit, embedpipe.runtime.registry\n"
        "import embedpipe.runtime.gemma_embedding, embedpipe.codegen.library, embedpipe.indexes.searcher\n"
        "import embedpipe.indexes.annoy, embedpipe.cli.embed_cmd, embedpipe.cli.index_cmd"
    )
    assert "gguf" not in _loaded_after(code)


@pytest.mark.model
def test_warm_embed_does_not_import_gguf():
    """The first run fills the weight and GGUF-index caches (it may use gguf for that); a
    warm run reads them and our own header parser only."""
    code = "from embedpipe.cli.app import app\nfrom embedpipe.cli.errors import run_cli\nassert run_cli(app, ['embed', 'x']) == 0"
    _loaded_after(code)
    assert "gguf" not in _loaded_after(code)


@pytest.mark.parametrize("preset,expected", [(None, "4"), ("12", "12")])
def test_the_command_quiets_openblas_spinning_before_numpy_loads(preset, expected):
    """``main`` sets OPENBLAS_THREAD_TIMEOUT (unless the user did) before any command imports
    numpy, whose OpenBLAS reads it once at load."""
    code = (
        "import os, sys\n"
        + (
            f"os.environ['OPENBLAS_THREAD_TIMEOUT'] = {preset!r}\n"
            if preset
            else "os.environ.pop('OPENBLAS_THREAD_TIMEOUT', None)\n"
        )
        + "from embedpipe.cli import app\nassert 'numpy' not in sys.modules\n"
        "sys.argv = ['embedpipe', '--version']\n"
        "try:\n    app.main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected
