"""The llama.cpp peer's load-time workaround, against a stand-in for llama-cpp-python's
low-level module (the real one is a bench-only extra that CI does not install)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from embedpipe.runtime.bench_peers import extra_buffer_types


class Params:
    def __init__(self) -> None:
        self.use_extra_bufts = True
        self.n_gpu_layers = 0


def fake_llama_cpp(params_type=Params):
    lowlevel = SimpleNamespace(llama_model_default_params=params_type)
    return SimpleNamespace(llama_cpp=lowlevel)


def test_off_on_amx_hosts_while_the_model_loads_and_restored_after():
    module = fake_llama_cpp()
    with extra_buffer_types(module, enabled=False) as note:
        params = module.llama_cpp.llama_model_default_params()
        assert params.use_extra_bufts is False and params.n_gpu_layers == 0
        assert "llama.cpp#20824" in note
    assert module.llama_cpp.llama_model_default_params is Params
    assert module.llama_cpp.llama_model_default_params().use_extra_bufts is True


def test_restored_when_the_load_fails():
    module = fake_llama_cpp()
    with pytest.raises(RuntimeError), extra_buffer_types(module, enabled=False):
        raise RuntimeError("llama.cpp rejects the file")
    assert module.llama_cpp.llama_model_default_params is Params


def test_untouched_where_enabled_or_the_parameter_is_unknown():
    module = fake_llama_cpp()
    with extra_buffer_types(module, enabled=True) as note:
        assert note == "" and module.llama_cpp.llama_model_default_params().use_extra_bufts is True
    older = fake_llama_cpp(lambda: SimpleNamespace(n_gpu_layers=0))
    with extra_buffer_types(older, enabled=False) as note:
        assert note == "" and not hasattr(older.llama_cpp.llama_model_default_params(), "use_extra_bufts")
