"""Kernel objects linked once into cached shared libraries (no LLVM in a warm process), MCJIT
when that is off or impossible; both give the same code."""

from __future__ import annotations

import ctypes
import logging

import pytest

from embedpipe.codegen import jit
from embedpipe.codegen.isa import detect_isa

IR = """
define i64 @ep_test_answer(i64 %x) {
  %y = mul i64 %x, 6
  ret i64 %y
}
"""


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    return tmp_path


def _call(addrs: dict[str, int]) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(addrs["ep_test_answer"])(7)


@pytest.mark.skipif(jit._linker() is None, reason="no C compiler driver to link with")
def test_object_is_linked_once_and_loaded_as_a_shared_library(cache):
    obj = jit.compile_object(IR, detect_isa())
    assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    (lib,) = cache.glob("*.so")
    stamp = lib.stat().st_mtime_ns
    assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert lib.stat().st_mtime_ns == stamp  # not linked again


def test_mcjit_when_linking_is_off(cache, monkeypatch):
    monkeypatch.setenv(jit.LINK_ENV, "0")
    obj = jit.compile_object(IR, detect_isa())
    assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert list(cache.glob("*.so")) == []


def test_damaged_library_falls_back_and_is_relinked(cache, caplog):
    obj = jit.compile_object(IR, detect_isa())
    path = cache / f"{jit.hashlib.sha256(obj).hexdigest()}.so"
    path.write_bytes(b"not an ELF file")
    with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.jit"):
        assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert "unusable" in caplog.text and not path.exists()
