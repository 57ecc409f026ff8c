"""Instruction-set table and host detection.

An :class:`IsaSpec` is pure data: the LLVM target (triple, CPU, feature string), the vector
width the emitters use and the integer dot-product strategy.  The host is detected from the
operating system's CPU flags (``/proc/cpuinfo``), never from LLVM's host CPU name, which some
hypervisors misreport.  ``EMBEDPIPE_ISA`` overrides the choice; an override the CPU cannot run
raises :class:`UnsupportedIsaError` instead of dying later with SIGILL.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from embedpipe.errors import EmbedpipeError

log = logging.getLogger(__name__)

ISA_ENV = "EMBEDPIPE_ISA"


class UnsupportedIsaError(EmbedpipeError):
    """The requested instruction set is unknown or this CPU cannot execute it."""


@dataclass(frozen=True)
class IsaSpec:
    """One code-generation target.

    ``dot`` names the int8 dot-product strategy of the integer kernels:
    ``vnni`` (u8×s8 groups of 4 via ``vpdpbusd``), ``sdot`` (s8×s8 groups of 4, AArch64
    ``sdot``), ``maddubs`` (AVX2 ``vpmaddubsw`` sign trick, groups of 4), ``pmaddwd`` (s16×s16 pairs via ``vpmaddwd``) or ``widen`` (s16 pairs in plain
    vector IR that LLVM lowers for whatever target it has).

    ``recip`` names the reciprocal-estimate instruction family (``ir_elementwise.RECIPROCALS``:
    ``rcp14`` AVX-512, ``rcp`` AVX, ``frecpe`` NEON) or is empty for an exact division.
    """

    name: str
    arch: str  # "x86_64" or "aarch64"
    triple: str
    cpu: str
    features: str
    lanes: int  # 32-bit lanes per vector register
    dot: str
    required_flags: frozenset[str]
    recip: str = ""

    @property
    def kgroup(self) -> int:
        """Consecutive k elements that one 32-bit lane of the dot instruction consumes."""
        return DOT_KGROUP[self.dot]


DOT_KGROUP = {"vnni": 4, "sdot": 4, "maddubs": 4, "pmaddwd": 2, "widen": 2}

_X86 = "x86_64-unknown-linux-gnu"
_A64 = "aarch64-unknown-linux-gnu"

# Most capable first: detection picks the first entry whose required flags the CPU reports.
ISA_TABLE: tuple[IsaSpec, ...] = (
    IsaSpec(
        "avx512_vnni",
        "x86_64",
        _X86,
        "x86-64-v4",
        "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512vnni,+fma,+f16c,-prefer-256-bit",
        16,
        "vnni",
        frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
        "rcp14",
    ),
    IsaSpec(
        "avx512",
        "x86_64",
        _X86,
        "x86-64-v4",
        "+avx512f,+avx512bw,+avx512vl,+avx512dq,+fma,+f16c,-prefer-256-bit",
        16,
        "pmaddwd",
        frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
        "rcp14",
    ),
    IsaSpec(
        "avx2", "x86_64", _X86, "x86-64-v3", "+avx2,+fma,+f16c", 8, "maddubs", frozenset({"avx2", "fma", "f16c"}), "rcp"
    ),
    IsaSpec(
        "neon_dotprod",
        "aarch64",
        _A64,
        "generic",
        "+neon,+dotprod",
        4,
        "sdot",
        frozenset({"asimd", "asimddp"}),
        "frecpe",
    ),
    IsaSpec("neon", "aarch64", _A64, "generic", "+neon", 4, "widen", frozenset({"asimd"}), "frecpe"),
    IsaSpec("generic", "x86_64", _X86, "x86-64", "", 4, "widen", frozenset()),
    IsaSpec("generic_aarch64", "aarch64", _A64, "generic", "", 4, "widen", frozenset()),
)

ISAS: dict[str, IsaSpec] = {spec.name: spec for spec in ISA_TABLE}


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """``read_cpu_flags()`` of this host, read once (callers on hot paths, e.g. a kernel's
    choice per call, would otherwise read /proc/cpuinfo each time)."""
    return frozenset(read_cpu_flags())


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """CPU feature flags as the kernel reports them (x86 ``flags``, AArch64 ``Features``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def runnable_isas(flags: set[str] | None = None, arch: str | None = None) -> list[IsaSpec]:
    """Every table entry this CPU can execute, most capable first."""
    flags = read_cpu_flags() if flags is None else flags
    arch = host_arch() if arch is None else arch
    return [s for s in ISA_TABLE if s.arch == arch and s.required_flags <= flags]


def _generic_for(arch: str) -> IsaSpec:
    return ISAS["generic_aarch64"] if arch == "aarch64" else ISAS["generic"]


def detect_isa(flags: set[str] | None = None, arch: str | None = None, override: str | None = None) -> IsaSpec:
    """Choose the target: the ``override`` (default: ``$EMBEDPIPE_ISA``) or the best runnable."""
    arch = host_arch() if arch is None else arch
    cpu_flags = read_cpu_flags() if flags is None else flags
    runnable = runnable_isas(cpu_flags, arch)
    wanted = os.environ.get(ISA_ENV) if override is None else override
    if wanted:
        wanted = wanted.strip().lower()
        if wanted == "generic":
            return _generic_for(arch)
        spec = ISAS.get(wanted)
        if spec is None:
            raise UnsupportedIsaError(
                f"unknown instruction set {wanted!r} (from {ISA_ENV} or --isa); "
                f"choose one of: {', '.join(s.name for s in ISA_TABLE)}"
            )
        if spec not in runnable:
            missing = sorted(spec.required_flags - cpu_flags) if spec.arch == arch else [spec.arch]
            raise UnsupportedIsaError(
                f"instruction set {wanted!r} cannot run on this CPU (missing: "
                f"{', '.join(missing)}); runnable here: "
                f"{', '.join(s.name for s in runnable) or 'none'}"
            )
        return spec
    return runnable[0] if runnable else _generic_for(arch)
