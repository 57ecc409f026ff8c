"""Kernel benchmark: GOPS per weight type × ISA × shape, against numpy fp32 BLAS and the peak,
and for integer types against the same loop with one scale per row (``scale_ceiling``).

The peak is measured in the same run by ``peak.PeakProbe`` (independent dot instructions, the
ISA's own int8 dot or fp32 FMA, on every thread), so the reported fraction is robust to turbo
clocks and to other load on the machine.  A nominal figure from the OS clock is printed
beside it where the per-cycle throughput of the core is known.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from gguf import GGMLQuantizationType
from threadpoolctl import threadpool_limits

from embedpipe.codegen.isa import IsaSpec, detect_isa, runnable_isas
from embedpipe.codegen.library import get_kernel_library
from embedpipe.codegen.matrix_units import describe_peaks
from embedpipe.codegen.peak import PeakProbe, matrix_peaks
from embedpipe.codegen.quant_formats import FORMATS, aligned_empty
from embedpipe.codegen.scale_ceiling import RowScaleKernel
from embedpipe.codegen.threads import CACHE_LINE

Q = GGMLQuantizationType

# The embedding model's FFN products (K -> N): gate/up 768->1152, down 1152->768.
MODEL_SHAPES: tuple[tuple[int, int], ...] = ((768, 1152), (1152, 768))
TOKENS: tuple[int, ...] = (16, 128, 512, 2048)
# Nominal int8 ops per cycle per core where the core is known (one 512-bit vpdpbusd per cycle =
# 64 multiply-adds = 128 ops: Zen 4, Intel client cores; Intel server cores with two 512-bit FMA
# ports issue two, and the measured peak shows it).
NOMINAL_INT8_OPS_PER_CYCLE = {"avx512_vnni": 128}


@dataclass
class KernelResult:
    qtype: str
    isa: str
    k: int
    n: int
    tokens: int
    threads: int
    ms: float
    gops: float
    numpy_ms: float
    speedup_vs_numpy: float
    # of the int8-dot peak (integer types) or the fp32-FMA peak (float types):
    fraction_of_peak: float  # per busy CPU second, each run paired with a peak probe
    fraction_of_peak_wall: float  # wall-clock GOPS / best measured peak
    # the same loop with one scale per row (``scale_ceiling``), per busy CPU second; int types
    row_scale_fraction_of_peak: float | None = None


def nominal_peak_gops(isa: IsaSpec, threads: int) -> float | None:
    per_cycle = NOMINAL_INT8_OPS_PER_CYCLE.get(isa.name)
    mhz = _cpu_mhz()
    return per_cycle * mhz * 1e6 * threads / 1e9 if per_cycle and mhz else None


def _cpu_mhz() -> float | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def _paired(fn: Callable[[], object], ops: float, probe: PeakProbe, repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``fn`` and its median fraction of the peak per busy CPU second.

    Each run is paired with a peak probe taken right before it, and both are measured in
    process CPU time: on a shared machine, time spent descheduled then counts against neither,
    so the fraction describes the kernel, not the neighbours.  Wall time is reported as is.
    """
    fn()
    times, ratios = [], []
    for _ in range(repeats):
        _, probe_cpu = probe.run()
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        used = max(time.process_time() - cpu, 1e-9)
        ratios.append((ops / used) / (probe.ops / max(probe_cpu, 1e-9)))
    return statistics.median(times), statistics.median(ratios)


def call_seconds(fn: Callable[[], object], calls: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of ``calls`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(call_seconds(fn, repeats))


def random_weight(qtype: Q, n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random GGUF bytes of ``qtype`` and their float32 dequantization (for numpy)."""
    from gguf import quants

    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    if qtype in (Q.Q4_K, Q.Q6_K):  # gguf-py cannot quantize these: random blocks, sane scales
        from gguf import GGML_QUANT_SIZES

        _, ts = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n, k // 256, ts), dtype=np.uint8)
        scale = np.full((n, k // 256), 1e-3, np.float16).view(np.uint8).reshape(n, k // 256, 2)
        for offset in (0, 2) if qtype == Q.Q4_K else (ts - 2,):  # d, dmin / d
            raw[:, :, offset : offset + 2] = scale
        raw = raw.reshape(n, -1)
    else:
        raw = np.asarray(quants.quantize(w, qtype)).view(np.uint8).reshape(n, -1)
    deq = np.asarray(quants.dequantize(raw, qtype), np.float32).reshape(n, k)
    return raw, deq


def run_kernel_bench(
    qtypes: list[str] | None = None,
    isas: list[str] | None = None,
    tokens: tuple[int, ...] = TOKENS,
    threads: int | None = None,
    repeats: int = 7,
    shapes: tuple[tuple[int, int], ...] = MODEL_SHAPES,
    report: Callable[[str], None] = print,
) -> dict:
    """Benchmark every requested (type, ISA, shape, T); returns a JSON-able summary."""
    names = qtypes or ["Q8_0"]
    specs = [detect_isa(override=i) for i in isas] if isas else [detect_isa()]
    rng = np.random.default_rng(0)
    results: list[KernelResult] = []
    peaks: dict[str, dict] = {}
    elementwise: dict[str, dict] = {}
    for spec in specs:
        lib = get_kernel_library(spec.name, threads)
        probes = {kind: PeakProbe(spec, lib.threads, kind) for kind in ("int", "float")}
        best = {kind: p.gops(runs=5) for kind, p in probes.items()}
        nominal = nominal_peak_gops(spec, lib.threads)
        matrix = matrix_peaks(spec, lib.threads, runs=5)
        peaks[spec.name] = {
            "measured_int8_gops": best["int"],
            "nominal_int8_gops": nominal,
            "measured_fp32_gflops": best["float"],
            "measured_matrix_gops": matrix,
            "threads": lib.threads,
        }
        report(
            f"{spec.name}: {lib.threads} threads, measured peaks (best of 5): int8 dot "
            f"{best['int']:.0f} GOPS, fp32 FMA {best['float']:.0f} GFLOP/s"
            + (
                f"; one 512-bit dot a cycle at the OS-reported {_cpu_mhz() / 1000:.2f} GHz would be "
                f"{nominal:.0f} GOPS, the measured peak is {best['int'] / nominal:.2f}x that "
                "(turbo clocks; server cores issue two)"
                if nominal
                else ""
            )
            + (f"; matrix units (not used by these kernels): {describe_peaks(matrix)}" if matrix else "")
        )
        report(
            f"{'type':6} {'K':>5} {'N':>5} {'T':>5} {'ms':>8} {'GOPS':>7} {'%pk cpu':>7} "
            f"{'%pk wall':>8} {'numpy ms':>9} {'x numpy':>7} {'1-scale %pk':>11}"
        )
        ceiling = None
        for name in names:
            qtype = Q[name]
            fmt = FORMATS[qtype]
            kind = fmt.family
            for k, n in shapes:
                if k % fmt.k_multiple:
                    continue
                raw, deq = random_weight(qtype, n, k, rng)
                mm = lib.prepare_matmul(qtype, raw, n, k)
                wt = np.ascontiguousarray(deq.T)
                for t in tokens:
                    x = rng.standard_normal((t, k)).astype(np.float32)
                    ops = 2 * t * k * n
                    y = aligned_empty((t, n), np.float32, CACHE_LINE)
                    sec, per_peak = _paired(lambda mm=mm, x=x, y=y: mm(x, y), ops, probes[kind], repeats)
                    with threadpool_limits(limits=lib.threads, user_api="blas"):  # equal threads
                        np_sec = _median_seconds(lambda x=x, wt=wt: x @ wt, repeats)
                    row_scale = None
                    if kind == "int":
                        ceiling = ceiling or RowScaleKernel(lib)
                        row_scale = _paired(ceiling.prepare(mm, x).run, ops, probes[kind], repeats)[1]
                    gops = ops / sec / 1e9
                    res = KernelResult(
                        name,
                        spec.name,
                        k,
                        n,
                        t,
                        lib.threads,
                        sec * 1e3,
                        gops,
                        np_sec * 1e3,
                        np_sec / sec,
                        per_peak,
                        gops / best[kind],
                        row_scale,
                    )
                    results.append(res)
                    report(
                        f"{name:6} {k:5} {n:5} {t:5} {res.ms:8.3f} {gops:7.1f} "
                        f"{100 * res.fraction_of_peak:6.1f}% "
                        f"{100 * res.fraction_of_peak_wall:7.1f}% {res.numpy_ms:9.3f} "
                        f"{res.speedup_vs_numpy:7.2f} "
                        + (f"{100 * row_scale:10.1f}%" if row_scale is not None else f"{'-':>11}")
                    )
        elementwise.update(_bench_gelu(lib, tokens, repeats, report))
    return {"peaks": peaks, "results": [asdict(r) for r in results], "elementwise": elementwise}


def _bench_gelu(lib, tokens: tuple[int, ...], repeats: int, report: Callable[[str], None]) -> dict:
    """gelu_tanh(a)·b on (T, 1152) against the numexpr expression it replaces."""
    import numexpr as ne

    rng = np.random.default_rng(1)
    out = {}
    report(f"gelu_tanh_mul {'T':>5} {'ms':>8} {'numexpr ms':>10} {'x numexpr':>9}")
    c, a3, half, one = (np.float32(v) for v in (np.sqrt(2 / np.pi), 0.044715, 0.5, 1.0))
    for t in tokens:
        g = rng.standard_normal((t, 1152)).astype(np.float32)
        u = rng.standard_normal((t, 1152)).astype(np.float32)
        sec = _median_seconds(lambda g=g, u=u: lib.gelu_tanh_mul(g, u), repeats)
        names = {"g": g, "u": u, "c": c, "a3": a3, "half": half, "one": one}
        ne_sec = _median_seconds(
            lambda names=names: ne.evaluate("half * g * (one + tanh(c * (g + a3 * g * g * g))) * u", local_dict=names),
            repeats,
        )
        out[f"{lib.isa.name}/T={t}"] = {"ms": sec * 1e3, "numexpr_ms": ne_sec * 1e3}
        report(f"{'':13} {t:5} {sec * 1e3:8.3f} {ne_sec * 1e3:10.3f} {ne_sec / sec:9.2f}")
    return out


def all_runnable_isa_names() -> list[str]:
    return [s.name for s in runnable_isas()]
