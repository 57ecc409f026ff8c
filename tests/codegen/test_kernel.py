"""The one kernel path (codegen/kernel.py) and the generic kernels on it, on every ISA.

Oracles: each kernel's numpy twin; the ctypes prototype against the compiled IR's own
function type; a module LLVM cannot build falls back to its twins, warning once.
"""

from __future__ import annotations

import logging

import llvmlite.ir as ir
import numpy as np
import pytest

from embedpipe.codegen import get_kernel_library, jit, kernel, runnable_isas
from embedpipe.codegen.attention import ATTENTION_MODULE
from embedpipe.codegen.ir_quantize import quantize_reference
from embedpipe.codegen.irutil import F32, I64, PTR
from embedpipe.codegen.kernel import Kernel, KernelModule
from embedpipe.codegen.rowdot import ROWDOT, ROWDOT_MODULE, rowdot, rowdot_reference
from embedpipe.codegen.topk import TOPK, TOPK_MODULE, topk_reference
from tests.codegen.helpers import assert_signature_is_the_compiled_ir_type

ISAS = runnable_isas()
IDS = [s.name for s in ISAS]


@pytest.mark.parametrize("isa", ISAS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8])
@pytest.mark.parametrize("n,d", [(1, 1), (3, 7), (5, 17), (4, 48), (9, 100), (4099, 33)])
def test_rowdot_matches_twin(isa, dtype, n, d, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # n >= 4096 splits over the pool
    rng = np.random.default_rng(n * d)
    x = (rng.standard_normal((n, d)) * 40).astype(dtype)
    q = rng.standard_normal(d).astype(np.float32)
    got = ROWDOT[np.dtype(dtype)].on(isa)(x, q)
    np.testing.assert_allclose(got, rowdot_reference(x, q), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got, x.astype(np.float64) @ q, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("isa", ISAS, ids=IDS)
@pytest.mark.parametrize(
    "shape,k", [((7, 1000), 10), ((3, 5), 8), ((600, 2000), 1), ((1, 1), 1), ((33, 131), 17), ((1200, 900), 5)]
)
def test_topk_matches_twin(isa, shape, k, monkeypatch):
    monkeypatch.setenv("EMBEDPIPE_THREADS", "2")  # 1200x900 splits over the pool
    s = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
    got, want = TOPK.on(isa)(s, k), topk_reference(s, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("isa", IDS)
@pytest.mark.parametrize("t,n,k", [(1, 1, 32), (8, 37, 64), (45, 130, 96), (3, 300, 768)])
def test_int8_gemm_matches_numpy(isa, t, n, k):
    """codes·scale against X quantized per 32 elements: the integers the kernel multiplies."""
    rng = np.random.default_rng(t * n)
    codes = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    x = rng.standard_normal((t, k)).astype(np.float32)
    y = get_kernel_library(isa, 2).prepare_int8(codes, scale)(x)
    xq, xd = quantize_reference(x)
    xf = (xq.reshape(t, -1, 32) * xd[:, :, None].astype(np.float64)).reshape(t, k)
    ref = xf @ (codes.astype(np.float64) * scale[:, None]).T
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("module", [ROWDOT_MODULE, TOPK_MODULE], ids=lambda m: m.name)
def test_ctypes_signature_is_the_compiled_ir_type(module):
    assert_signature_is_the_compiled_ir_type(module, ISAS[0])


def _broken(b: ir.IRBuilder, isa) -> None:
    b.function.append_basic_block("dangling")  # no terminators: LLVM rejects the module


def test_compile_failure_warns_once_and_runs_the_twin(caplog):
    twin = lambda x: x * 2  # noqa: E731
    bad = Kernel(
        "broken",
        [("x", PTR), ("n", I64)],
        _broken,
        twin=twin,
        drive=lambda native, x: pytest.fail("the driver ran without a kernel"),
    )
    module = KernelModule("ep_test_broken", [bad])
    try:
        with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.kernel"):
            first = bad(np.arange(3.0))
            second = bad(np.arange(4.0))
        np.testing.assert_array_equal(first, [0, 2, 4])
        np.testing.assert_array_equal(second, [0, 2, 4, 6])
        assert len([r for r in caplog.records if "ep_test_broken" in r.getMessage()]) == 1
        assert bad.native() is None
        with pytest.raises(RuntimeError):
            bad.on(ISAS[0])
    finally:
        kernel.forget(module)


def test_real_kernel_falls_back_when_llvm_fails(monkeypatch, caplog):
    """The row-dot wiring itself: a failing compile gives the twin's numbers, one warning."""

    def fail(*args):
        raise RuntimeError("LLVM ERROR: forced for the test")

    x = np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32)
    q = np.ones(40, np.float32)
    kernel.forget(ROWDOT_MODULE)
    monkeypatch.setattr(jit, "compile_cached", fail)
    try:
        with caplog.at_level(logging.WARNING, logger="embedpipe.codegen.kernel"):
            a, b = rowdot(x, q), rowdot(x, q)
        np.testing.assert_array_equal(a, rowdot_reference(x, q))
        np.testing.assert_array_equal(b, a)
        assert len([r for r in caplog.records if "forced for the test" in r.getMessage()]) == 1
    finally:
        kernel.forget(ROWDOT_MODULE)
    monkeypatch.undo()
    assert ROWDOT[np.dtype(np.float32)].native() is not None


def test_kernel_outside_a_module_is_a_programming_error():
    orphan = Kernel("orphan", [("x", PTR)], _broken)
    with pytest.raises(RuntimeError, match="no KernelModule"):
        orphan.native()


def test_scalar_types_map_to_ctypes():
    assert kernel.ctype_of(F32).__name__ == "c_float"
    with pytest.raises(TypeError):
        kernel.ctype_of(ir.IntType(128))


def _store_scaled(b: ir.IRBuilder, isa) -> None:
    out, x, i = b.function.args
    b.store(b.fmul(x, ir.Constant(F32, 2.0)), b.gep(out, [i], source_etype=F32))
    b.ret_void()


def test_run_passes_fp32_words_alike_for_one_item_and_many():
    """A single item runs as a direct call, many through the fork trampolines: an fp32 argument
    given as ``f32_word`` bits must arrive as the same float either way."""
    store = Kernel("store_scaled", [("out", PTR), ("x", F32), ("i", I64)], _store_scaled, twin=None, drive=None)
    module = KernelModule("ep_test_f32_words", [store])
    try:
        native = kernel._registry.load(module, ISAS[0], strict=True).natives["store_scaled"]
        out = np.zeros(3, np.float32)
        native.run([(out.ctypes.data, kernel.f32_word(1.25), 0)])
        native.run([(out.ctypes.data, kernel.f32_word(-3.5), 1), (out.ctypes.data, kernel.f32_word(0.75), 2)])
        np.testing.assert_array_equal(out, np.float32([2.5, -7.0, 1.5]))
    finally:
        kernel.forget(module)


def test_warm_load_generates_no_ir(monkeypatch):
    """A module whose object is cached loads under its source key without building IR."""
    isa = ISAS[0]
    kernel.forget(TOPK_MODULE)
    TOPK.on(isa)  # fills the cache (or finds it filled)
    kernel.forget(TOPK_MODULE)

    def no_ir(*args):
        raise AssertionError("IR generated on a warm load")

    monkeypatch.setattr(KernelModule, "build", no_ir)
    hits = jit.STATS.cache_hits
    try:
        s = np.random.default_rng(3).standard_normal((4, 50)).astype(np.float32)
        got, want = TOPK.on(isa)(s, 5), topk_reference(s, 5)
        np.testing.assert_array_equal(got[0], want[0])
        assert jit.STATS.cache_hits == hits + 1
    finally:
        kernel.forget(TOPK_MODULE)


def test_cache_key_covers_sources_declarations_and_isa(monkeypatch):
    isa = ISAS[0]
    files = {p.name for p in TOPK_MODULE.source_files()}
    # the emitter's module, what it imports from the codegen package (module and function
    # level, `from embedpipe.codegen import ir_pool` style too) and the kernel path itself
    assert {"topk.py", "irutil.py", "isa.py", "kernel.py", "ir_parallel.py", "ir_pool.py", "threads.py"} <= files
    assert "ir_elementwise.py" in {p.name for p in ATTENTION_MODULE.source_files()}  # emit_exp
    key = TOPK_MODULE.cache_key(isa)
    assert key == TOPK_MODULE.cache_key(isa) and len(key) == 64
    assert len({m.cache_key(i) for m in (TOPK_MODULE, ROWDOT_MODULE) for i in ISAS}) == 2 * len(ISAS)
    # a changed generator source changes the key
    real = kernel.Path.read_bytes

    def edited(path):
        data = real(path)
        return data + b"\n# edited\n" if path.name == "irutil.py" else data

    monkeypatch.setattr(kernel.Path, "read_bytes", edited)
    assert TOPK_MODULE.cache_key(isa) != key


def test_cache_key_covers_the_emitter_not_the_driver():
    """A kernel's IR lives in its own module (``ir_*``, or ``*_ir`` beside an index type) and its
    driver beside it: the key hashes the emitter and what it imports, so a driver edit keeps
    the cached objects."""
    from embedpipe.codegen.encoder_attention import ENCODER_ATTENTION_MODULE
    from embedpipe.indexes.annoy_kernel import ANNOY_MODULE
    from embedpipe.indexes.hnsw_kernel import HNSW_MODULE

    for module, emitter, drivers in (
        (ATTENTION_MODULE, "ir_attention.py", {"attention.py"}),
        (ENCODER_ATTENTION_MODULE, "ir_encoder_attention.py", {"encoder_attention.py", "encoder_fused.py"}),
        (HNSW_MODULE, "hnsw_search_ir.py", {"hnsw_kernel.py", "format.py", "quant.py"}),
        (ANNOY_MODULE, "annoy_search_ir.py", {"annoy_kernel.py", "annoy.py", "format.py"}),
    ):
        files = {p.name for p in module.source_files()}
        assert emitter in files and not drivers & files, (module.name, sorted(files))


def test_parallel_symbols_are_named_without_ir():
    for module in (TOPK_MODULE, ROWDOT_MODULE):
        for isa in ISAS:
            assert module.build(isa)[1] == module.parallel_symbols(isa)
