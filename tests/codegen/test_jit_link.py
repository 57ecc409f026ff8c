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


@pytest.mark.skipif(jit._linker() is None, reason="no C compiler driver to link with")
def test_damaged_library_fails_its_checksum_and_is_relinked(cache, caplog):
    obj = jit.compile_object(IR, detect_isa())
    jit.HostEngine().load(obj, ["ep_test_answer"])
    path = cache / f"{jit.hashlib.sha256(obj).hexdigest()}.so"
    good = path.read_bytes()
    path.unlink()  # a new file: rewriting the loaded one in place would change this process's mapped code
    path.write_bytes(good[:-100] + bytes(100))  # same size, damaged tail
    with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.jit"):
        assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert "fails its checksum" in caplog.text
    assert path.read_bytes() == good and jit.library_is_intact(path)


@pytest.mark.skipif(jit._linker() is None, reason="no C compiler driver to link with")
def test_library_without_a_recorded_digest_is_relinked_quietly(cache, caplog):
    """An older build's libraries carry no digest: relinked once, without a warning per file."""
    obj = jit.compile_object(IR, detect_isa())
    path = cache / f"{jit.hashlib.sha256(obj).hexdigest()}.so"
    path.write_bytes(b"planted by someone else")
    with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.jit"):
        assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert jit.library_is_intact(path) and caplog.text == ""


def test_unloadable_library_with_a_matching_digest_falls_back_to_mcjit(cache, caplog):
    obj = jit.compile_object(IR, detect_isa())
    path = cache / f"{jit.hashlib.sha256(obj).hexdigest()}.so"
    path.write_bytes(b"not an ELF file")
    path.with_name(path.name + ".sha256").write_text(jit.hashlib.sha256(b"not an ELF file").hexdigest())
    with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.jit"):
        assert _call(jit.HostEngine().load(obj, ["ep_test_answer"])) == 42
    assert "unusable" in caplog.text and not path.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-1],
        lambda raw: raw[:10],
        lambda raw: raw[:100] + bytes([raw[100] ^ 1]) + raw[101:],
        lambda raw: b"",
    ],
    ids=["truncated-trailer", "truncated", "bit-flip", "empty"],
)
def test_damaged_object_fails_its_checksum_and_is_compiled_again(cache, caplog, damage):
    isa = detect_isa()
    obj = jit.compile_object(IR, isa)
    (path,) = cache.glob("*.o")
    path.write_bytes(damage(path.read_bytes()))
    compiled = jit.STATS.compiled
    with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.jit"):
        assert jit.compile_object(IR, isa) == obj
    assert jit.STATS.compiled == compiled + 1 and "fails its checksum" in caplog.text
    assert jit.compile_object(IR, isa) == obj and jit.STATS.compiled == compiled + 1
