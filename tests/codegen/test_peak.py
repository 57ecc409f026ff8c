"""The compute-peak probe: its loop does the work it counts, on every runnable ISA."""

import ctypes
import functools

import numpy as np
import pytest

from embedpipe.codegen import jit
from embedpipe.codegen.isa import runnable_isas
from embedpipe.codegen.peak import PEAK_CHAINS, PeakProbe, ops_per_instruction, peak_module

ISAS = runnable_isas()


@functools.cache
def _loop(isa, kind, chains):
    text, name = peak_module(isa, kind, chains)
    addr = jit.host_engine().load(jit.compile_object(text, isa), [name])[name]
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr)


def _run(isa, kind, chains, buf, iters):
    _loop(isa, kind, chains)(buf.ctypes.data, iters)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("chains", [7, PEAK_CHAINS])
@pytest.mark.parametrize("iters", [0, 1, 5])
def test_int_loop_updates_every_chain_every_iteration(isa, chains, iters):
    # c = 1 in every 32-bit lane: each dot adds the accumulator's lowest byte (or int16) to
    # itself, so a chain starting at 1 doubles per iteration while it stays below 128.
    buf = np.ones(3 * isa.lanes, np.int32)
    _run(isa, "int", chains, buf, iters)
    np.testing.assert_array_equal(buf[: isa.lanes], np.full(isa.lanes, chains * 2**iters, np.int32))


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("iters", [0, 1, 6])
def test_float_loop_updates_every_chain_every_iteration(isa, iters):
    # acc·0.5 + 1 from 1: 2 − 2^−n, exact in fp32
    buf = np.repeat(np.float32([0.5, 1.0, 1.0]), isa.lanes)
    _run(isa, "float", 5, buf, iters)
    np.testing.assert_array_equal(buf[: isa.lanes], np.full(isa.lanes, 5 * (2 - 2.0**-iters), np.float32))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="peak kind"):
        peak_module(ISAS[0], "int4")


@pytest.mark.parametrize("kind", ["int", "float"])
def test_probe_counts_its_ops(kind):
    isa = ISAS[0]
    probe = PeakProbe(isa, threads=2, kind=kind, target_seconds=0.001)
    assert probe.iters >= 1
    assert probe.ops == 2 * probe.iters * PEAK_CHAINS * ops_per_instruction(isa, kind)
    wall, cpu = probe.run()
    assert wall > 0 and cpu > 0
    assert probe.gops(runs=1) > 0


def test_ops_per_instruction():
    by_name = {s.name: s for s in ISAS}
    if "avx512_vnni" in by_name:  # 16 lanes × 4 byte products, multiply and add
        assert ops_per_instruction(by_name["avx512_vnni"], "int") == 128
        assert ops_per_instruction(by_name["avx512_vnni"], "float") == 32
