"""The llama.cpp server launcher of `bench serve` loads its model with the same workaround as
the `bench runtime` peer; a stand-in llama_cpp package records what the server module saw."""

from __future__ import annotations

import sys

import pytest

from embedpipe.runtime import bench_peers
from embedpipe.serve import llama_cpp_launch

STAND_IN = {
    "llama_cpp/__init__.py": "from . import llama_cpp\n",
    "llama_cpp/llama_cpp.py": (
        "class Params:\n"
        "    def __init__(self):\n"
        "        self.use_extra_bufts = True\n"
        "def llama_model_default_params():\n"
        "    return Params()\n"
    ),
    "llama_cpp/server/__init__.py": "",
    "llama_cpp/server/__main__.py": (
        "import sys\n"
        "import llama_cpp\n"
        "params = llama_cpp.llama_cpp.llama_model_default_params()\n"
        "open(sys.argv[-1], 'w').write(f'{sys.argv[0]} {params.use_extra_bufts}')\n"
    ),
}


@pytest.mark.parametrize("flags,extra_buffers", [({"avx512f", "amx_int8"}, "False"), ({"avx512f"}, "True")])
def test_the_server_module_runs_with_its_arguments_and_the_hosts_buffer_types(
    flags, extra_buffers, tmp_path, monkeypatch
):
    for path, text in STAND_IN.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "llama_cpp" or m.startswith("llama_cpp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(bench_peers, "read_cpu_flags", lambda: set(flags))
    out = tmp_path / "seen.txt"
    monkeypatch.setattr(sys, "argv", ["launch", "--model", "m.gguf", str(out)])
    llama_cpp_launch.main()
    assert out.read_text() == f"{tmp_path / 'llama_cpp/server/__main__.py'} {extra_buffers}"
