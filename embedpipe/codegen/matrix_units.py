"""Tile-matrix units: the CPU's matrix multipliers beside its vector units, as data.

The JIT multiplies on vector dots. A peer may not: ONNX Runtime's int8 GEMM runs on Intel AMX
where the CPU has it. So the benchmarks name the units a host has and measure their peak
(``peak.matrix_peak_module``) next to the vector peak their fractions are taken of.

Each entry is one tile product instruction: the CPU flags it needs, the LLVM target features
that let code use it, its intrinsic, the element pattern of 1.0 in its operand type, and the
work of one product (multiply and add counted as two ops). On Linux x86_64 the tile data state
is handed out per process on request (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``);
until it is granted, the first tile instruction kills the process with SIGILL, so a unit is
usable only where the flags are present and the request was granted (``usable_units``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from embedpipe.codegen.isa import IsaSpec, UnsupportedIsaError, host_arch, host_cpu_flags

log = logging.getLogger(__name__)

#: Set to ``off`` to keep the JIT's kernels off the tile units.
TILE_UNITS_ENV = "EMBEDPIPE_TILE_UNITS"

#: Rows of every tile the probes configure, and bytes per row (palette 1's maximum).
TILE_ROWS = 16
TILE_ROW_BYTES = 64


def tile_config(tiles: int) -> bytes:
    """The 64-byte ``ldtilecfg`` operand: palette 1, ``tiles`` tiles of 16 rows × 64 bytes."""
    colsb = [TILE_ROW_BYTES] * tiles + [0] * (16 - tiles)
    rows = [TILE_ROWS] * tiles + [0] * (16 - tiles)
    return bytes([1, 0]) + bytes(14) + b"".join(c.to_bytes(2, "little") for c in colsb) + bytes(rows)


@dataclass(frozen=True)
class MatrixUnit:
    name: str  # the CPU flag naming the unit's product, as /proc/cpuinfo spells it
    arch: str
    flags: frozenset[str]
    features: str  # LLVM target features added to the ISA's
    product: str  # intrinsic of one tile product: C (fp32 or int32) += A · B
    operand: str  # element type of A and B
    one: bytes  # 1 in that type, little-endian
    grant: Callable[[], bool]  # asks the OS for the unit's state (once)

    @property
    def elem_bytes(self) -> int:
        return len(self.one)

    @property
    def rate(self) -> str:
        """What its peak counts: integer ops or floating-point ones."""
        return "GOPS" if self.operand.startswith("int") else "GFLOP/s"

    @property
    def ops_per_product(self) -> int:
        """Multiply-adds of one product (16 × 16 outputs, a 64-byte row of each operand), × 2."""
        return 2 * TILE_ROWS * TILE_ROWS * (TILE_ROW_BYTES // self.elem_bytes)

    def target(self, isa: IsaSpec) -> IsaSpec:
        """``isa`` with this unit's LLVM features (for code that uses it)."""
        return replace(isa, name=f"{isa.name}+{self.name}", features=f"{isa.features},{self.features}")


# Linux x86_64 arch_prctl: request the AMX tile data state for the whole process.
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


@functools.cache
def grant_amx_tiles() -> bool:
    """Whether Linux lets this process use AMX tile data (asked once; threads started before
    and after share the grant)."""
    if platform.system() != "Linux" or host_arch() != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    granted = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    if not granted:
        log.info("the OS refused the AMX tile state (errno %d)", ctypes.get_errno())
    return granted


def _amx(name: str, feature: str, product: str, operand: str, one: bytes) -> MatrixUnit:
    return MatrixUnit(
        name, "x86_64", frozenset({"amx_tile", name}), f"+amx-tile,+{feature}", product, operand, one, grant_amx_tiles
    )


MATRIX_UNITS: tuple[MatrixUnit, ...] = (
    _amx("amx_int8", "amx-int8", "llvm.x86.tdpbssd", "int8", b"\x01"),
    _amx("amx_bf16", "amx-bf16", "llvm.x86.tdpbf16ps", "bf16", b"\x80\x3f"),
    _amx("amx_fp16", "amx-fp16", "llvm.x86.tdpfp16ps", "fp16", b"\x00\x3c"),
)
UNITS = {u.name: u for u in MATRIX_UNITS}


def present_units(flags: set[str] | None = None, arch: str | None = None) -> list[MatrixUnit]:
    """The units whose CPU flags this host reports (whether or not the OS grants them)."""
    flags = host_cpu_flags() if flags is None else flags
    arch = host_arch() if arch is None else arch
    return [u for u in MATRIX_UNITS if u.arch == arch and u.flags <= flags]


def usable_units(flags: set[str] | None = None, arch: str | None = None) -> list[MatrixUnit]:
    """The present units this process may run (the OS is asked only for present ones)."""
    return [u for u in present_units(flags, arch) if u.grant()]


def kernel_units(arch: str) -> list[MatrixUnit]:
    """The usable units the JIT's kernels may multiply on for ``arch`` code: none when
    ``EMBEDPIPE_TILE_UNITS=off`` (the vector kernels everywhere, e.g. to compare the two)."""
    if os.environ.get(TILE_UNITS_ENV, "").strip().lower() in ("off", "0", "none", "false"):
        return []
    return [u for u in usable_units() if u.arch == arch]


def require_usable(unit: MatrixUnit) -> None:
    """Raise UnsupportedIsaError unless this process may run ``unit`` (its tile code would die
    with SIGILL otherwise)."""
    if unit not in present_units():
        raise UnsupportedIsaError(f"this CPU has no {unit.name} (needs the CPU flags {', '.join(sorted(unit.flags))})")
    if not unit.grant():
        raise UnsupportedIsaError(f"the operating system did not grant this process the {unit.name} tile state")


def describe_peaks(peaks: Mapping[str, float]) -> str:
    """``amx_int8 6896 GOPS, amx_bf16 3675 GFLOP/s`` for peaks by unit name."""
    return ", ".join(f"{name} {gops:.0f} {UNITS[name].rate}" for name, gops in peaks.items())
