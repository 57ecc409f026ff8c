"""KernelLibrary: the compiled kernels of one ISA (module build, object cache, load, native
fork-join) and its validated fp32 row kernels; weights it prepares are ``prepared.PreparedMatmul``.

All inputs are validated in Python before a native call; a kernel only ever sees buffers whose
sizes were checked against the dimensions it is given.
"""

from __future__ import annotations

import array
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen import (
    ir_elementwise,
    ir_encoder,
    ir_float,
    ir_fused,
    ir_parallel,
    ir_pool,
    ir_q8,
    ir_quantize,
    ir_rows,
    jit,
)
from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.ir_float import FloatTile
from embedpipe.codegen.ir_q8 import QK, IntTile
from embedpipe.codegen.isa import ISAS, IsaSpec, detect_isa, host_arch
from embedpipe.codegen.kernel import f32_word, imported_sources, prototype, sources_digest
from embedpipe.codegen.prepared import KernelInputError, PreparedMatmul
from embedpipe.codegen.quant_formats import FORMATS, aligned_empty, weight_empty
from embedpipe.codegen.recorder import active_recorder, count_native_call
from embedpipe.codegen.threads import default_threads, row_parts, split_range
from embedpipe.errors import EmbedpipeError

log = logging.getLogger(__name__)


# Register tiles per ISA (token rows × weight vectors), chosen to fit the register file
# without spilling and then by `bench kernels` (README, "Kernels", has the figures): int tiles
# hold MR·NV int32 and MR·NV fp32 accumulators, float tiles MR·NV fp32 accumulators.  On AVX2
# the int8 vpmaddubsw path is kept over an int16 vpmaddwd one: it runs about as fast and
# streams half the weight memory, which is what short documents pay for.
Tiles = tuple[IntTile, FloatTile]
TILES: dict[str, Tiles] = {
    "avx512_vnni": (IntTile(4, 3), FloatTile(8, 2)),
    "avx512": (IntTile(2, 4), FloatTile(8, 2)),
    "avx2": (IntTile(4, 1), FloatTile(4, 2)),
    "neon_dotprod": (IntTile(4, 2), FloatTile(4, 4)),
    "neon": (IntTile(2, 2), FloatTile(4, 4)),
    "generic": (IntTile(1, 4), FloatTile(4, 2)),
    "generic_aarch64": (IntTile(2, 2), FloatTile(4, 4)),
}

# Version of the packed weight layouts (`pack` of every format, `PreparedMatmul.packed`): bump it
# whenever a packer's output changes, so that on-disk repack caches made before are not used.
PACKED_LAYOUT_VERSION = 1

_QUANT = prototype(ir_quantize.QUANTIZE_PARAMS)
_FORK = prototype(ir_parallel.PARALLEL_PARAMS)


@dataclass(frozen=True)
class _Role:
    """One kernel of the library module: ``symbol(isa[, tile])`` names it and
    ``emit(module, isa[, tile])`` writes it, ``tile`` being the ISA's "int" or "float" tile, its
    one-row "row" variant, or none; ``forked`` kernels run through the native fork-join (each
    gets a task trampoline and a parallel entry point)."""

    name: str
    symbol: Callable[..., str]
    emit: Callable[..., str]
    tile: str | None = None
    forked: bool = True

    def tiles(self, tiles: Tiles) -> tuple[IntTile | FloatTile, ...]:
        int_tile, float_tile = tiles
        by_kind = {"int": int_tile, "float": float_tile, "row": FloatTile(1, float_tile.nv, float_tile.tc)}
        return (by_kind[self.tile],) if self.tile else ()


# Every kernel of the library module, in the order it is emitted (the work kernels call
# ``quantize`` and ``q8mm``, so those come first). "row" is the coded float
# kernel with one token row per micro-tile, same panels: for fewer rows than a tile (a
# projection head over one pooled row would otherwise multiply MR−1 repeated rows).
_ROLES = (
    _Role("quantize", ir_quantize.quantize_symbol, ir_quantize.emit_quantize, forked=False),
    _Role("q8mm", ir_q8.matmul_symbol, ir_q8.emit_matmul, "int", forked=False),
    _Role("f32mm", ir_float.matmul_symbol, ir_float.emit_matmul, "float"),
    _Role("c8f32mm", ir_float.codes_symbol, ir_float.emit_matmul_codes, "float"),
    _Role("c8f32mv", ir_float.codes_symbol, ir_float.emit_matmul_codes, "row"),
    _Role("gelu_mul", ir_elementwise.gelu_mul_symbol, ir_elementwise.emit_gelu_tanh_mul),
    _Role("rms_norm", ir_elementwise.rms_norm_symbol, ir_elementwise.emit_rms_norm),
    _Role("gelu_erf", ir_encoder.gelu_erf_symbol, ir_encoder.emit_gelu_erf),
    _Role("layer_norm", ir_encoder.layer_norm_symbol, ir_encoder.emit_layer_norm),
    _Role("q8work", ir_q8.work_symbol, ir_q8.emit_work, "int"),
    _Role("q8work_addnorm", ir_fused.addnorm_work_symbol, ir_fused.emit_addnorm_work, "int"),
    _Role("q8work_gelu", ir_fused.gelu_work_symbol, ir_fused.emit_gelu_work, "int"),
    _Role("q8work_bias_gelu", ir_fused.bias_gelu_work_symbol, ir_fused.emit_bias_gelu_work, "int"),
    _Role("q8work_residual_norm", ir_fused.residual_norm_work_symbol, ir_fused.emit_residual_norm_work, "int"),
    _Role("qk_norm_rope", ir_rows.qk_norm_rope_symbol, ir_rows.emit_qk_norm_rope),
    _Role("add_norm", ir_rows.add_norm_symbol, ir_rows.emit_add_norm),
)
# Kernels that run through the native fork-join (each gets a task trampoline).
PARALLEL_ROLES = tuple(r.name for r in _ROLES if r.forked)


def kernel_symbols(isa: IsaSpec, tiles: Tiles | None = None) -> dict[str, str]:
    """Role -> symbol of every function in the library module of ``isa`` (with its ``TILES``
    unless ``tiles`` says otherwise)."""
    tiles = tiles or TILES[isa.name]
    symbols = {r.name: r.symbol(isa, *r.tiles(tiles)) for r in _ROLES}
    for role in PARALLEL_ROLES:
        symbols[f"{role}_task"] = ir_parallel.task_symbol(symbols[role])
        symbols[f"{role}_parallel"] = ir_parallel.parallel_symbol(symbols[f"{role}_task"])
    return symbols


def module_name(isa: IsaSpec) -> str:
    return f"embedpipe_{isa.name}"


def build_module(isa: IsaSpec, tiles: Tiles | None = None) -> tuple[str, dict[str, str]]:
    """IR text of every kernel for ``isa`` (with ``tiles``, default its ``TILES``) and a map
    role -> symbol."""
    tiles = tiles or TILES[isa.name]
    module = ir.Module(name=module_name(isa))
    module.triple = isa.triple
    symbols = {r.name: r.emit(module, isa, *r.tiles(tiles)) for r in _ROLES}
    kernels = [module.get_global(symbols[role]) for role in PARALLEL_ROLES]
    parallel = ir_parallel.emit_entry_points(module, kernels)
    for role in PARALLEL_ROLES:
        symbols[f"{role}_task"] = ir_parallel.task_symbol(symbols[role])
        symbols[f"{role}_parallel"] = parallel[symbols[role]]
    assert symbols == kernel_symbols(isa, tiles)
    return str(module), symbols


# The modules whose functions emit the library's IR, this one included (it assembles them).
_EMITTERS = (ir_q8, ir_quantize, ir_float, ir_elementwise, ir_encoder, ir_fused, ir_rows, ir_parallel, ir_pool)


def generator_sources() -> list[Path]:
    """The source files that shape the library IR: the emitter modules, every embedpipe
    module they import (transitively, so a helper module added later is never left out),
    and this module."""
    roots = frozenset(m.__file__ for m in _EMITTERS)
    return sorted({Path(p) for p in imported_sources(roots)} | {Path(__file__)})


@functools.cache
def _generator_fingerprint() -> str:
    """Hash of the sources that generate the library IR: equal sources give equal IR."""
    return sources_digest(generator_sources())


def library_cache_key(isa: IsaSpec, tiles: Tiles | None = None) -> str:
    """Generator fingerprint + every IsaSpec field that shapes the IR + tiles + target +
    llvmlite version (the flag set is left out: a set's repr order varies per process)."""
    spec = f"{isa.name}:{isa.arch}:{isa.lanes}:{isa.dot}"
    return jit.cache_key(f"library:{_generator_fingerprint()}:{spec}:{tiles or TILES[isa.name]}", isa)


def library_object(isa: IsaSpec, tiles: Tiles | None = None) -> bytes:
    """The compiled library object for ``isa`` from the disk cache, without generating IR
    when it is there."""
    return jit.compile_cached(library_cache_key(isa, tiles), lambda: build_module(isa, tiles)[0], isa)


class KernelLibrary:
    """Compiled kernels for one host ISA plus the thread count used to run them.

    ``tiles`` replaces the ISA's register tiles (``TILES``), for comparing tiles in one process
    (``tile_bench``): every symbol that depends on a tile names it, so two libraries of one ISA
    load side by side."""

    def __init__(self, isa: IsaSpec, threads: int, tiles: Tiles | None = None) -> None:
        if isa.arch != host_arch():
            raise EmbedpipeError(f"cannot run {isa.name} ({isa.arch}) kernels on a {host_arch()} host")
        self.isa = isa
        self.threads = threads
        self.int_tile, self.float_tile = tiles or TILES[isa.name]
        start = time.perf_counter()
        symbols = kernel_symbols(isa, (self.int_tile, self.float_tile))
        addrs = jit.host_engine().load(library_object(isa, (self.int_tile, self.float_tile)), list(symbols.values()))
        self._quantize = _QUANT(addrs[symbols["quantize"]])
        self._forks = {role: _FORK(addrs[symbols[f"{role}_parallel"]]) for role in PARALLEL_ROLES}
        # task trampolines, for forks recorded into a ``codegen.program`` step program
        self._tasks = {role: addrs[symbols[f"{role}_task"]] for role in PARALLEL_ROLES}
        self._pool = ir_pool.shared_pool(isa)
        self.load_seconds = time.perf_counter() - start
        log.debug(
            "kernel library %s (%s, %s) ready in %.3f s, %d threads",
            isa.name,
            isa.cpu,
            isa.features or "no extra features",
            self.load_seconds,
            threads,
        )

    def fork(self, role: str, items: list[tuple[int, ...]], same_op: bool = False) -> None:
        """Run kernel ``role`` once per item (its arguments as 64-bit words: addresses,
        integers, or ``f32_word(x)``), item 0 on this thread and the others on the library's
        persistent workers (fresh pthreads if another thread holds them), all inside one
        GIL-free native call.  Inside ``recorder.recording`` the fork is recorded instead, as a
        further step of the previous fork's operation when ``same_op``."""
        rec = active_recorder()
        if rec is not None:
            rec.add(self._tasks[role], items, same_op=same_op)
            return
        count_native_call()
        # array.array: its address is one buffer_info() away (numpy's .ctypes builds an object per call)
        words = array.array("q", [word for item in items for word in item])
        self._forks[role](self._pool, words.buffer_info()[0], len(items[0]) * 8, len(items))

    def gelu_tanh_mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``gelu_tanh(a) · b`` element-wise (fp32, same shape, C-contiguous), ~1e-6 relative."""
        for name, arr in (("a", a), ("b", b)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise KernelInputError(f"gelu_tanh_mul: {name} must be a float32 numpy array")
            if not (arr.flags.c_contiguous and arr.flags.aligned):
                raise KernelInputError(f"gelu_tanh_mul: {name} must be C-contiguous")
        if a.shape != b.shape:
            raise KernelInputError(f"gelu_tanh_mul: shapes differ: {a.shape} vs {b.shape}")
        out = np.empty_like(a)
        size = a.size
        parts = row_parts(self.threads, size)
        head = (a.ctypes.data, b.ctypes.data, out.ctypes.data)
        self.fork("gelu_mul", [(*head, lo, hi) for lo, hi in split_range(0, size, parts, 2 * self.isa.lanes)])
        return out

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """``x / sqrt(mean(x²) + eps) · weight`` over the last axis of fp32 ``x`` (any leading
        shape, C-contiguous); ``weight`` is fp32 of length ``x.shape[-1]``."""
        for name, arr in (("x", x), ("weight", weight)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise KernelInputError(f"rms_norm: {name} must be a float32 numpy array")
            if not (arr.flags.c_contiguous and arr.flags.aligned):
                raise KernelInputError(f"rms_norm: {name} must be C-contiguous")
        if x.ndim < 1 or weight.shape != (x.shape[-1],) or x.shape[-1] == 0:
            raise KernelInputError(
                f"rms_norm: weight shape {weight.shape} does not match rows of length {x.shape[-1:]}"
            )
        out = np.empty_like(x)
        d = x.shape[-1]
        rows = x.size // d
        parts = row_parts(self.threads, x.size)
        head = (x.ctypes.data, weight.ctypes.data, out.ctypes.data, d, f32_word(eps))
        self.fork("rms_norm", [(*head, a, b) for a, b in split_range(0, rows, parts)])
        return out

    def gelu_erf(self, a: np.ndarray) -> np.ndarray:
        """Exact GELU ``0.5·a·(1 + erf(a/√2))`` element-wise (fp32, C-contiguous), ~3e-7 absolute."""
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not (a.flags.c_contiguous and a.flags.aligned):
            raise KernelInputError("gelu_erf: a must be a C-contiguous float32 numpy array")
        out = np.empty_like(a)
        parts = row_parts(self.threads, a.size)
        self.fork(
            "gelu_erf",
            [(a.ctypes.data, out.ctypes.data, lo, hi) for lo, hi in split_range(0, a.size, parts, 2 * self.isa.lanes)],
        )
        return out

    def layer_norm(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        """``(x − mean) / sqrt(var + eps) · weight + bias`` over the last axis of fp32 ``x``."""
        for name, arr in (("x", x), ("weight", weight), ("bias", bias)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise KernelInputError(f"layer_norm: {name} must be a float32 numpy array")
            if not (arr.flags.c_contiguous and arr.flags.aligned):
                raise KernelInputError(f"layer_norm: {name} must be C-contiguous")
        if x.ndim < 1 or x.shape[-1] == 0 or weight.shape != (x.shape[-1],) or bias.shape != weight.shape:
            raise KernelInputError(
                f"layer_norm: weight {weight.shape} / bias {bias.shape} do not match rows of length {x.shape[-1:]}"
            )
        out = np.empty_like(x)
        d = x.shape[-1]
        parts = row_parts(self.threads, x.size)
        head = (x.ctypes.data, weight.ctypes.data, bias.ctypes.data, out.ctypes.data, d, f32_word(eps))
        self.fork("layer_norm", [(*head, a, b) for a, b in split_range(0, x.size // d, parts)])
        return out

    def matmul_f32(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``x · wᵀ`` for fp32 ``w`` (N, K) used once (packed on the fly, no caching)."""
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 2:
            raise KernelInputError("matmul_f32: w must be a 2-D float32 numpy array")
        packed = ir_float.pack_weights(w, self.isa, self.float_tile, aligned_empty)
        return PreparedMatmul(self, GGMLQuantizationType.F32, w.shape[0], w.shape[1], "float", (packed,))(x)

    def _quantize_weights(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fp32 W (N, K) -> Q8_0 blocks (int8 (N, K), fp32 scales (N, K/32)) with the emitted
        quantize kernel (bit-identical to ``ir_quantize.quantize_reference``, which is far slower)."""
        n, k = w.shape
        eb = ir_q8.act_elem_bytes(self.isa)
        q = np.empty((n, k), np.int8 if eb == 1 else np.int16)
        d = np.empty((n, k // QK), np.float32)
        corr = np.empty((n, k // QK), np.int32)
        self._quantize(w.ctypes.data, q.ctypes.data, d.ctypes.data, corr.ctypes.data, n, k, 0, n)
        return q.astype(np.int8, copy=False), d

    def prepare_int8(self, codes: np.ndarray, scale: np.ndarray) -> PreparedMatmul:
        """Int8 GEMM operand: ``codes`` int8 (N, K), K a multiple of 32, times a per-row fp32
        ``scale`` (N,); calling the result with X (T, K) fp32 gives ``X·(scale·codes)ᵀ``
        with X quantized per 32 elements, as for Q8_0 weights."""
        if not isinstance(codes, np.ndarray) or codes.dtype != np.int8 or codes.ndim != 2:
            raise KernelInputError("int8 matmul: codes must be a 2-D int8 numpy array")
        n, k = codes.shape
        if n == 0 or k == 0 or k % QK:
            raise KernelInputError(
                f"int8 matmul: codes shape {codes.shape} needs rows and a width that is a multiple of {QK}"
            )
        scale = np.asarray(scale, np.float32)
        if scale.shape != (n,):
            raise KernelInputError(f"int8 matmul: scale shape {scale.shape}, expected ({n},)")
        d = np.repeat(scale[:, None], k // QK, axis=1)
        packed = ir_q8.pack_weights(codes, d, self.isa, self.int_tile, weight_empty)
        return PreparedMatmul(self, GGMLQuantizationType.Q8_0, n, k, "int", packed)

    def _format(self, qtype: GGMLQuantizationType, raw: np.ndarray, n: int, k: int):
        """The registered format of ``qtype`` after checking ``raw`` holds an N×K weight of it."""
        try:
            fmt = FORMATS[GGMLQuantizationType(qtype)]
        except (KeyError, ValueError):
            raise KernelInputError(
                f"no JIT kernel for weight type {qtype!r}; supported: {', '.join(q.name for q in FORMATS)}"
            ) from None
        if not (isinstance(n, int | np.integer) and isinstance(k, int | np.integer) and n > 0 and k > 0):
            raise KernelInputError(f"weight dimensions must be positive integers, got {n}x{k}")
        n, k = int(n), int(k)
        block = fmt.k_multiple
        if k % block:
            raise KernelInputError(f"{fmt.qtype.name} weight: K={k} is not a multiple of the block size {block}")
        row_bytes = fmt.row_bytes(k)
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
            raise KernelInputError(
                f"{fmt.qtype.name} weight: raw data must be a uint8 numpy "
                f"array, got {type(raw).__name__} "
                f"{getattr(raw, 'dtype', '')}"
            )
        if raw.shape != (n, row_bytes):
            raise KernelInputError(
                f"{fmt.qtype.name} weight {n}x{k}: expected raw shape ({n}, {row_bytes}), got {raw.shape}"
            )
        return fmt

    def prepare_codes(self, qtype: GGMLQuantizationType, raw: np.ndarray, n: int, k: int) -> PreparedMatmul:
        """A GGUF weight of an exactly unpacked int format (Q8_0, Q4_0) kept as int8 codes for
        the fp32-activation kernel: the products of ``prepare_matmul(F32, dequantized)`` at a
        quarter of the bytes."""
        fmt = self._format(qtype, raw, n, k)
        if fmt.family != "int" or not fmt.exact:
            raise KernelInputError(f"{fmt.qtype.name} weight: no exact int8 codes for the fp32-activation kernel")
        q, d = fmt.repack(np.ascontiguousarray(raw), int(n), int(k))
        packed = ir_float.pack_codes(q, d, self.isa, self.float_tile, weight_empty)
        return PreparedMatmul(self, fmt.qtype, int(n), int(k), "codes", packed)

    def prepare_matmul(self, qtype: GGMLQuantizationType, raw: np.ndarray, n: int, k: int) -> PreparedMatmul:
        """Repack a GGUF weight ``raw`` (N rows of ``row_bytes``) for ``Y = X·Wᵀ``."""
        fmt = self._format(qtype, raw, n, k)
        n, k = int(n), int(k)
        packed = fmt.pack(self, np.ascontiguousarray(raw), n, k)
        return PreparedMatmul(self, fmt.qtype, n, k, fmt.family, packed)


_libraries: dict[tuple[str, int], KernelLibrary] = {}
_libraries_lock = threading.Lock()


def get_kernel_library(isa: str | None = None, threads: int | None = None) -> KernelLibrary:
    """The process-wide library for ``isa`` (default: detected) and ``threads`` (default:
    ``$EMBEDPIPE_THREADS`` or the usable cores)."""
    spec = detect_isa(override=isa) if isa is not None else detect_isa()
    nthreads = default_threads() if threads is None else int(threads)
    if nthreads < 1:
        raise EmbedpipeError(f"threads must be >= 1, got {threads}")
    key = (spec.name, nthreads)
    with _libraries_lock:
        lib = _libraries.get(key)
        if lib is None:
            lib = KernelLibrary(spec, nthreads)
            _libraries[key] = lib
        return lib


__all__ = ["KernelLibrary", "PreparedMatmul", "KernelInputError", "get_kernel_library", "build_module", "TILES", "ISAS"]
