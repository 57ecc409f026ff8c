"""ISA detection from flag sets, overrides, input validation before native code, object cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.codegen import (
    KernelInputError,
    UnsupportedIsaError,
    default_threads,
    detect_isa,
    get_kernel_library,
    jit,
    library,
    prepared,
    runnable_isas,
)
from embedpipe.codegen.isa import ISAS, read_cpu_flags
from embedpipe.codegen.library import build_module
from embedpipe.errors import EmbedpipeError
from tests.codegen.helpers import random_raw

ZEN4 = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
SKYLAKE_X = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
HASWELL = {"sse4_2", "avx", "avx2", "fma", "f16c"}
OLD_X86 = {"sse2", "sse4_2"}
GRAVITON3 = {"fp", "asimd", "asimddp", "sve"}
CORTEX_A72 = {"fp", "asimd"}


@pytest.mark.parametrize(
    "flags,arch,expected",
    [
        (ZEN4, "x86_64", "avx512_vnni"),
        (SKYLAKE_X, "x86_64", "avx512"),
        (HASWELL, "x86_64", "avx2"),
        (OLD_X86, "x86_64", "generic"),
        (ZEN4 - {"avx512bw"}, "x86_64", "avx2"),
        (GRAVITON3, "aarch64", "neon_dotprod"),
        (CORTEX_A72, "aarch64", "neon"),
        (set(), "aarch64", "generic_aarch64"),
    ],
)
def test_detect_from_flags(flags, arch, expected, monkeypatch):
    monkeypatch.delenv("EMBEDPIPE_ISA", raising=False)
    assert detect_isa(flags, arch).name == expected


def test_override_picks_weaker_isa(monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_ISA", "avx2")
    assert detect_isa(ZEN4, "x86_64").name == "avx2"
    monkeypatch.setenv("EMBEDPIPE_ISA", "generic")
    assert detect_isa(ZEN4, "x86_64").name == "generic"
    assert detect_isa(GRAVITON3, "aarch64").name == "generic_aarch64"


@pytest.mark.parametrize(
    "flags,arch,wanted,needle",
    [
        (HASWELL, "x86_64", "avx512_vnni", "avx512_vnni"),
        (SKYLAKE_X, "x86_64", "avx512_vnni", "avx512_vnni"),
        (ZEN4, "x86_64", "neon", "aarch64"),
        (CORTEX_A72, "aarch64", "neon_dotprod", "asimddp"),
    ],
)
def test_override_unsupported_is_clear_error(flags, arch, wanted, needle, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_ISA", wanted)
    with pytest.raises(UnsupportedIsaError, match=f"cannot run on this CPU.*{needle}"):
        detect_isa(flags, arch)


def test_override_unknown_name(monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_ISA", "sse9")
    with pytest.raises(UnsupportedIsaError, match="unknown instruction set 'sse9'"):
        detect_isa(ZEN4, "x86_64")


def test_library_refuses_isa_cpu_lacks():
    host = read_cpu_flags()
    missing = [s.name for s in ISAS.values() if s.name not in {r.name for r in runnable_isas()} and s.name != "generic"]
    assert missing  # at least the aarch64 entries on x86 (and vice versa)
    for name in missing:
        with pytest.raises(EmbedpipeError):
            get_kernel_library(name, 1)
    assert host  # /proc/cpuinfo was readable


def test_threads_env(monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("EMBEDPIPE_THREADS", "zero")
    with pytest.raises(EmbedpipeError, match="EMBEDPIPE_THREADS"):
        default_threads()
    monkeypatch.delenv("EMBEDPIPE_THREADS")
    assert default_threads() == len(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def q8():
    rng = np.random.default_rng(0)
    lib = get_kernel_library(runnable_isas()[0].name, 2)
    return lib, lib.prepare_matmul(Q.Q8_0, random_raw(Q.Q8_0, 48, 64, rng), 48, 64)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((4, 64), np.float64), "float32"),
        (np.zeros((4, 63), np.float32), r"shape \(T, 64\)"),
        (np.zeros((64,), np.float32), r"shape \(T, 64\)"),
        (np.zeros((4, 128), np.float32)[:, ::2], "C-contiguous"),
        (np.asfortranarray(np.zeros((4, 64), np.float32)), "C-contiguous"),
        ([[0.0] * 64], "numpy array"),
    ],
)
def test_bad_activation_rejected(q8, bad, match):
    _, mm = q8
    with pytest.raises(KernelInputError, match=match):
        mm(bad)


def test_bad_weights_rejected(q8):
    lib, _ = q8
    rng = np.random.default_rng(1)
    raw = random_raw(Q.Q8_0, 8, 64, rng)
    with pytest.raises(KernelInputError, match=r"expected raw shape \(8, 68\)"):
        lib.prepare_matmul(Q.Q8_0, raw[:, :-1], 8, 64)
    with pytest.raises(KernelInputError, match=r"expected raw shape"):
        lib.prepare_matmul(Q.Q8_0, raw, 9, 64)
    with pytest.raises(KernelInputError, match="uint8"):
        lib.prepare_matmul(Q.Q8_0, raw.astype(np.int16), 8, 64)
    with pytest.raises(KernelInputError, match="not a multiple of the block size 32"):
        lib.prepare_matmul(Q.Q8_0, np.zeros((8, 34), np.uint8), 8, 40)
    with pytest.raises(KernelInputError, match="no JIT kernel for weight type"):
        lib.prepare_matmul(Q.Q5_1, raw, 8, 64)
    with pytest.raises(KernelInputError, match="positive"):
        lib.prepare_matmul(Q.Q8_0, raw, 0, 64)


@pytest.mark.parametrize(
    "isa,must,must_not",
    [
        ("avx512_vnni", ["vpdpbusd", "zmm"], ["vpmaddwd"]),
        ("avx512", ["vpmaddwd", "zmm"], ["vpdpbusd"]),
        ("avx2", ["vpmaddubsw", "vpsignb", "vpmaddwd", "ymm", "vfmadd"], ["zmm", "vpdpbusd"]),
        ("generic", ["pmaddwd"], ["ymm", "zmm", "vfmadd"]),
        ("neon_dotprod", ["sdot"], []),
        ("neon", ["smull"], ["sdot"]),
    ],
)
def test_instruction_selection(isa, must, must_not):
    import llvmlite.ir as llir

    from embedpipe.codegen import ir_float, ir_q8

    spec = ISAS[isa]
    module = llir.Module()
    module.triple = spec.triple
    ir_q8.emit_matmul(module, spec, library.TILES[isa][0])
    ir_float.emit_matmul(module, spec, library.TILES[isa][1])
    asm = jit.emit_assembly(str(module), spec)
    for needle in must:
        assert needle in asm, (isa, needle)
    for needle in must_not:
        assert needle not in asm, (isa, needle)


def test_disk_cache_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_KERNEL_CACHE", str(tmp_path))
    isa = runnable_isas()[0]
    text, symbols = build_module(isa)
    before = (jit.STATS.compiled, jit.STATS.cache_hits)
    first = jit.compile_object(text, isa)
    second = jit.compile_object(text, isa)
    assert (jit.STATS.compiled, jit.STATS.cache_hits) == (before[0] + 1, before[1] + 1)
    assert first == second
    assert [p.name for p in tmp_path.iterdir()] == [f"{jit.cache_key(text, isa)}{jit.OBJECT_SUFFIX}"]
    other = jit.cache_key(text, ISAS["generic"])
    assert other != jit.cache_key(text, isa)


def test_warm_process_loads_fast(tmp_path):
    """A second process finds every kernel object on disk and is ready in well under 1 s."""
    code = (
        "import time; t=time.perf_counter(); from embedpipe.codegen import jit, "
        "get_kernel_library; lib=get_kernel_library(threads=1); "
        "print(jit.STATS.compiled, jit.STATS.cache_hits, lib.load_seconds)"
    )
    env = dict(os.environ, EMBEDPIPE_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.pop("EMBEDPIPE_ISA", None)
    cold = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    warm = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    # the library and the process's shared worker pool (codegen.ir_pool)
    assert cold[:2] == ["2", "0"] and warm[:2] == ["0", "2"]
    assert float(warm[2]) < 0.5


def test_kernels_work_in_forked_child():
    """The pool's threads do not survive fork(); a child must still get results, not hang."""
    import multiprocessing as mp

    rng = np.random.default_rng(3)
    raw = random_raw(Q.Q8_0, 96, 256, rng)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    mm = get_kernel_library(runnable_isas()[0].name, 2).prepare_matmul(Q.Q8_0, raw, 96, 256)
    prepared.MIN_PARALLEL_MACS, saved = 0, prepared.MIN_PARALLEL_MACS  # force the pool
    try:
        expected = mm(x)  # the parent's pool now has live threads
        _FORKED.update(mm=mm, x=x)
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_child_matmul).get(timeout=60)
    finally:
        prepared.MIN_PARALLEL_MACS = saved
        _FORKED.clear()
    np.testing.assert_array_equal(got, expected)


_FORKED: dict = {}  # handed to the forked child by inheritance (ctypes objects do not pickle)


def _child_matmul():
    return _FORKED["mm"](_FORKED["x"])


def test_library_key_covers_every_ir_input(monkeypatch):
    import dataclasses

    base = ISAS["avx2"]
    key = library.library_cache_key(base)
    assert library.library_cache_key(base) == key
    for change in ({"dot": "pmaddwd"}, {"lanes": 16}, {"features": "+avx2"}, {"cpu": "znver4"}):
        assert library.library_cache_key(dataclasses.replace(base, **change)) != key, change
    monkeypatch.setitem(library.TILES, "avx2", (library.IntTile(3, 1), library.TILES["avx2"][1]))
    assert library.library_cache_key(base) != key


def test_library_key_covers_every_generator_source():
    """The key hashes the emitter modules and every embedpipe module they import, found from
    their import lines: a helper split out of an emitter is covered without a list to edit."""
    names = {p.name for p in library.generator_sources()}
    emitters = {"ir_q8.py", "ir_quantize.py", "ir_float.py", "ir_fused.py", "ir_encoder.py", "ir_pool.py"}
    helpers = {"irutil.py", "isa.py", "ir_elementwise.py", "ir_parallel.py", "library.py"}
    assert emitters | helpers <= names
    # drivers that emit nothing stay out: editing them keeps the cached library
    assert not {"prepared.py", "fused.py", "attention.py", "quant_formats.py"} & names
