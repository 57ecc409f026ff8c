"""The table of tile-matrix units: which a host has, which it may run, and their peak loops."""

import ctypes
import functools

import numpy as np
import pytest

from embedpipe.codegen import jit
from embedpipe.codegen.isa import ISAS, UnsupportedIsaError
from embedpipe.codegen.matrix_units import (
    MATRIX_UNITS,
    TILE_ROW_BYTES,
    TILE_ROWS,
    UNITS,
    MatrixUnit,
    describe_peaks,
    present_units,
    require_usable,
    tile_config,
    usable_units,
)
from embedpipe.codegen.peak import MATRIX_CHAINS, TILE_BYTES, PeakProbe, matrix_peak_module

USABLE = usable_units()
AVX512 = ISAS["avx512_vnni"]


def _counting(unit: MatrixUnit, answer: bool, asked: list[str]) -> MatrixUnit:
    def grant() -> bool:
        asked.append(unit.name)
        return answer

    return MatrixUnit(unit.name, unit.arch, unit.flags, unit.features, unit.product, unit.operand, unit.one, grant)


def test_units_need_the_tile_flag_and_their_own():
    for unit in MATRIX_UNITS:
        assert unit.flags == {"amx_tile", unit.name}
        assert "+amx-tile" in unit.features.split(",")
        assert unit.ops_per_product == 2 * TILE_ROWS * TILE_ROWS * TILE_ROW_BYTES // len(unit.one)
    assert UNITS["amx_int8"].ops_per_product == 32768 and UNITS["amx_int8"].rate == "GOPS"
    assert UNITS["amx_bf16"].ops_per_product == 16384 and UNITS["amx_bf16"].rate == "GFLOP/s"


def test_ones_are_one_in_the_operand_type():
    assert np.frombuffer(b"\0\0" + UNITS["amx_bf16"].one, np.float32)[0] == 1.0  # bf16: fp32's high half
    assert np.frombuffer(UNITS["amx_fp16"].one, np.float16)[0] == 1.0
    assert np.frombuffer(UNITS["amx_int8"].one, np.int8)[0] == 1


def test_present_units_follow_the_cpu_flags_and_architecture():
    flags = {"avx512f", "amx_tile", "amx_int8", "amx_bf16"}
    assert [u.name for u in present_units(flags, "x86_64")] == ["amx_int8", "amx_bf16"]
    assert present_units({"amx_int8"}, "x86_64") == []  # no tile state, no unit
    assert present_units(flags, "aarch64") == []


def test_the_os_is_asked_only_for_units_the_cpu_has(monkeypatch):
    from embedpipe.codegen import matrix_units

    asked: list[str] = []
    table = tuple(_counting(u, u.name != "amx_bf16", asked) for u in MATRIX_UNITS)
    monkeypatch.setattr(matrix_units, "MATRIX_UNITS", table)
    assert usable_units({"sse2"}, "x86_64") == [] and asked == []
    got = usable_units({"amx_tile", "amx_int8", "amx_bf16"}, "x86_64")
    assert [u.name for u in got] == ["amx_int8"]  # the OS refused amx_bf16
    assert asked == ["amx_int8", "amx_bf16"]


def test_a_unit_the_host_cannot_run_is_refused_before_any_tile_code(monkeypatch):
    from embedpipe.codegen import matrix_units

    absent = [u for u in MATRIX_UNITS if u not in present_units()]
    for unit in absent:
        with pytest.raises(UnsupportedIsaError, match=f"no {unit.name}"):
            require_usable(unit)
    refused = _counting(MATRIX_UNITS[0], False, [])
    monkeypatch.setattr(matrix_units, "present_units", lambda *a: [refused])
    with pytest.raises(UnsupportedIsaError, match="did not grant"):
        require_usable(refused)


def test_tile_config_is_palette_one_with_full_tiles():
    cfg = tile_config(6)
    assert len(cfg) == 64 and cfg[0] == 1 and cfg[1] == 0
    colsb = [int.from_bytes(cfg[16 + 2 * i : 18 + 2 * i], "little") for i in range(16)]
    assert colsb == [TILE_ROW_BYTES] * 6 + [0] * 10
    assert list(cfg[48:]) == [TILE_ROWS] * 6 + [0] * 10


@pytest.mark.parametrize("unit", MATRIX_UNITS, ids=lambda u: u.name)
def test_every_unit_s_peak_loop_compiles(unit):
    """LLVM emits the loop for every unit, also where the host cannot run it."""
    text, name = matrix_peak_module(AVX512, unit)
    obj = jit.compile_object(text, unit.target(AVX512))
    assert obj and name.encode() in obj


def test_a_peak_loop_holds_at_most_six_accumulators():
    with pytest.raises(ValueError, match="1-6 accumulator tiles"):
        matrix_peak_module(AVX512, MATRIX_UNITS[0], 7)


@functools.cache
def _loop(unit: MatrixUnit):
    text, name = matrix_peak_module(AVX512, unit)
    addr = jit.host_engine().load(jit.compile_object(text, unit.target(AVX512)), [name])[name]
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr)


@pytest.mark.skipif(not USABLE, reason="this host has no matrix unit it may use")
@pytest.mark.parametrize("unit", USABLE, ids=lambda u: u.name)
@pytest.mark.parametrize("iters", [0, 1, 7])
def test_peak_loop_does_one_product_per_tile_per_iteration(unit, iters):
    # A and B all ones: every product adds K (64 / element bytes) to each element of C
    buf = np.frombuffer(unit.one * (2 * TILE_BYTES // len(unit.one)) + bytes(TILE_BYTES), np.uint8).copy()
    _loop(unit)(buf.ctypes.data, iters)
    c = buf[2 * TILE_BYTES :].view(np.int32 if unit.rate == "GOPS" else np.float32)
    np.testing.assert_array_equal(c, np.full(TILE_ROWS * TILE_ROWS, iters * TILE_ROW_BYTES // len(unit.one)))


@pytest.mark.skipif(not USABLE, reason="this host has no matrix unit it may use")
def test_matrix_probe_counts_its_ops_and_beats_the_vector_dot():
    unit = USABLE[0]
    probe = PeakProbe(AVX512, threads=1, kind=unit.name, target_seconds=0.005)
    assert probe.ops == probe.iters * MATRIX_CHAINS * unit.ops_per_product
    vector = PeakProbe(AVX512, threads=1, kind="int", target_seconds=0.005).gops()
    # every tile unit multiplies several times what one core's vector dots do
    assert probe.gops() > 2 * vector


def test_describe_peaks_names_what_each_counts():
    assert describe_peaks({"amx_int8": 6896.4, "amx_bf16": 3675.0}) == "amx_int8 6896 GOPS, amx_bf16 3675 GFLOP/s"
    assert describe_peaks({}) == ""
