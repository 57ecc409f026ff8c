"""On AArch64, the kernels the fixed harness of ``test_neon_emulation`` does not reach: the
kernel modules outside the model library (attention for EmbeddingGemma and for the BERT family,
the row gather, the encoder's LayerNorm and bias epilogue, brute-force search's row dots and
top-k, HNSW and Annoy search, HNSW graph construction) and the BERT family's library kernels (exact GELU, LayerNorm, the
bias + GELU work kernel). Each module is compiled by llvmlite for the NEON ISAs, linked into
``neon_tasks_harness.c`` and run under qemu-user on the very items its Python driver makes
(``QemuNative`` stands in for a loaded kernel, ``qemu_library`` for the library), and checked
against the same oracles as on the host.

Needs ``scripts/install_emulation.sh`` (qemu-user, gcc-aarch64-linux-gnu); skipped otherwise.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import llvmlite.ir as ir
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.codegen import encoder_attention as EA
from embedpipe.codegen import gather as G
from embedpipe.codegen import ir_attention as A
from embedpipe.codegen import ir_parallel, jit, scratch
from embedpipe.codegen.isa import ISAS, IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule
from embedpipe.codegen.library import PARALLEL_ROLES, TILES, KernelLibrary, build_module
from embedpipe.codegen.quant_formats import aligned_empty
from tests.codegen.helpers import random_raw
from tests.codegen.test_encoder_attention import oracle as encoder_oracle
from tests.codegen.test_encoder_attention import product
from tests.codegen.test_ir_attention import oracle as attention_oracle
from tests.codegen.test_ir_attention import packed
from tests.codegen.test_neon_emulation import CROSS_CC, QEMU, SYSROOT, requires_emulation

pytestmark = [pytest.mark.emulation, requires_emulation]

HARNESS = Path(__file__).with_name("neon_tasks_harness.c")
NEON_ISAS = ["neon_dotprod", "neon", "generic_aarch64"]
STACK_DEPTH = 6  # calling frames whose local arrays a driver's items may point into
OBJECT_DEPTH = 3  # containers and attributes followed from those locals


class QemuTasks:
    """Runs items of one task trampoline in the AArch64 harness under qemu.

    ``params``: each kernel parameter's name and whether it is a pointer. Every pointer word of
    an item must fall inside an array that ``arrays()`` names, that a driver on the calling
    stack holds in a local variable, or the drivers' registered scratch (those travel to the
    harness and come back); a parameter named ``counter`` (a work-claiming word) gets a zeroed
    word of its own. Any other address fails the test: the harness never sees host memory it
    was not given."""

    def __init__(
        self,
        exe: Path,
        task: str,
        params,
        arrays: Callable[[], Iterable[object]],
        returns: bool = False,
        nested: Iterable[str] = (),
    ) -> None:
        self.exe, self.task, self.params, self.arrays = exe, task, list(params), arrays
        self.returns = returns  # ``task`` names a direct wrapper that gives the kernel's result
        self.nested = set(nested)  # pointer parameters whose int64 arrays hold addresses themselves
        self.runs = 0

    def _known(self) -> list[np.ndarray]:
        values = [*self.arrays(), *(s.value for s in scratch.REGISTRY)]
        frame = sys._getframe(2)
        for _ in range(STACK_DEPTH):  # the driver's own buffers (its output, work tables, slots)
            if frame is None:
                break
            values += list(frame.f_locals.values())
            frame = frame.f_back
        found: dict[int, np.ndarray] = {}
        _collect(values, found, OBJECT_DEPTH)
        return sorted(found.values(), key=lambda a: -a.nbytes)  # a view's memory is found in its base first

    def run(self, items) -> list[int]:
        """Run ``items``; returns each one's result when the kernel returns a value."""
        known = self._known()
        buffers: list[np.ndarray] = []

        def place(word: int, what: str) -> tuple[int, int]:
            """(buffer number, byte offset) of the known array ``word`` points into."""
            host = next((a for a in known if a.ctypes.data <= word < a.ctypes.data + max(a.nbytes, 1)), None)
            assert host is not None, f"{self.task}: {what} points outside every known array"
            assert host.flags.c_contiguous, f"{self.task}: {what} points into a strided array"
            if not any(b is host for b in buffers):
                buffers.append(host)
            return next(k for k, b in enumerate(buffers) if b is host), word - host.ctypes.data

        relocs, inner, words = [], [], np.array(items, dtype=np.int64)
        for j, (name, pointer) in enumerate(self.params):
            if not pointer:
                continue
            for i, word in enumerate(words[:, j].tolist()):
                if name == "counter":
                    buffers.append(np.zeros(8, np.int64))
                    relocs.append((i, j, len(buffers) - 1, 0))
                elif word:
                    at, offset = place(word, f"word {name}")
                    relocs.append((i, j, at, offset))
                    if name in self.nested and not any(r[0] == at for r in inner):
                        inner += self._inner(at, buffers[at], known, place)
        job, out = self.exe.parent / "job.bin", self.exe.parent / "out.bin"
        parts = [np.int64(len(buffers)).tobytes()]
        for b in buffers:
            data = np.ascontiguousarray(b).tobytes()
            parts += [np.int64(len(data)).tobytes(), data, b"\0" * (-len(data) % 8)]
        parts += [np.array(words.shape, np.int64).tobytes(), words.tobytes()]
        parts += [np.int64(len(relocs)).tobytes(), np.array(relocs, np.int64).reshape(-1, 4).tobytes()]
        parts += [np.int64(len(inner)).tobytes(), np.array([r[:4] for r in inner], np.int64).reshape(-1, 4).tobytes()]
        job.write_bytes(b"".join(parts))
        argv = [QEMU, "-L", str(SYSROOT), str(self.exe), self.task, str(job), str(out)]
        proc = subprocess.run(argv, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        data, at = out.read_bytes(), 0
        for b in buffers:
            if b.flags.writeable and b.flags.c_contiguous:
                b.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, b.nbytes, at)
            at += b.nbytes
        for buf, word, _, _, host_word in inner:  # descriptors keep their host addresses
            buffers[buf].reshape(-1)[word] = host_word
        self.runs += 1
        return np.frombuffer(data, np.int64, len(words), at).tolist() if self.returns else []

    @staticmethod
    def _inner(at: int, descriptor: np.ndarray, known: list[np.ndarray], place) -> list[tuple[int, ...]]:
        """Relocations of the words of an int64 ``descriptor`` (buffer ``at``) that point into
        known arrays: (buffer, word, target buffer, offset, the host word to restore)."""
        assert descriptor.dtype == np.int64, "a nested pointer parameter must point to int64 words"
        out = []
        for w, value in enumerate(descriptor.reshape(-1).tolist()):
            if value and any(a.ctypes.data <= value < a.ctypes.data + max(a.nbytes, 1) for a in known):
                out.append((at, w, *place(value, f"word {w} of a descriptor"), value))
        return out


def _collect(values: Iterable[object], found: dict[int, np.ndarray], depth: int) -> None:
    """Every array among ``values``, in their tuples, lists and dicts and in the attributes of
    the objects among them, ``depth`` levels down."""
    for v in values:
        if isinstance(v, np.ndarray):
            found[id(v)] = v
        elif depth <= 0 or isinstance(v, (str, bytes, int, float, type)) or callable(v):
            continue
        elif isinstance(v, (tuple, list)):
            _collect(v[:64], found, depth - 1)
        elif isinstance(v, dict):
            _collect(list(v.values())[:64], found, depth - 1)
        elif hasattr(v, "__dict__"):
            _collect(list(vars(v).values()), found, depth - 1)


class QemuNative(QemuTasks):
    """A driver's ``Native`` (its ``isa``, ``run`` and ``run_packed``) for a kernel of a
    ``KernelModule``."""

    def __init__(
        self,
        kernel: Kernel,
        isa: IsaSpec,
        exe: Path,
        arrays: Callable[[], Iterable[object]],
        nested: Iterable[str] = (),
    ) -> None:
        returns = not isinstance(kernel.ret, ir.VoidType)
        symbol = kernel.module.symbol(kernel, isa)
        task = _direct_name(symbol) if returns else ir_parallel.task_symbol(symbol)
        params = [(n, isinstance(t, ir.PointerType)) for n, t in kernel.params]
        super().__init__(exe, task, params, arrays, returns, nested)
        self.isa = isa

    def __call__(self, *args: int) -> int | None:
        """One direct call, as a loaded ``Native`` takes it (integers and addresses)."""
        results = self.run([args])
        return results[0] if results else None

    def run_packed(self, words: int, stride: int, n: int) -> None:
        packed = np.ctypeslib.as_array((ctypes.c_int64 * (n * stride // 8)).from_address(words))
        self.run(packed.reshape(n, stride // 8).copy())


def _direct_name(symbol: str) -> str:
    return f"{symbol}__direct"


def _direct_wrapper(symbol: str, kernel: Kernel) -> list[str]:
    """C for ``long long <symbol>__direct(long long *w)``: the kernel called on the decoded
    words (pointer and integer parameters only), its int64 result returned."""
    c_ints = {64: "long long", 32: "int", 16: "short", 8: "signed char"}
    types = []
    for name, ty in kernel.params:
        pointer = isinstance(ty, ir.PointerType)
        assert pointer or getattr(ty, "width", None) in c_ints, f"{kernel.name}: no C type for {name}"
        types.append("void *" if pointer else c_ints[ty.width])
    assert kernel.ret == ir.IntType(64), f"{kernel.name}: only int64 results are returned"
    call = ", ".join(f"({t})w[{i}]" for i, t in enumerate(types))
    return [
        f"long long {symbol}({', '.join(types)});",
        f"long long {_direct_name(symbol)}(long long *w) {{ return {symbol}({call}); }}",
    ]


def _link(work: Path, obj: bytes, tasks: list[str], direct: dict[str, Kernel] | None = None) -> Path:
    """The harness linked with the object ``obj``, knowing the trampolines ``tasks`` and
    direct wrappers of the ``direct`` kernels (by symbol) that return a value."""
    direct = direct or {}
    (work / "module.o").write_bytes(obj)
    table = [f"void *{t}(long long *);" for t in tasks]
    table += ["typedef void *(*task_fn)(long long *);", "typedef long long (*direct_fn)(long long *);"]
    table += ["const char *const task_names[] = {" + ", ".join(f'"{t}"' for t in tasks) + "};"]
    table += ["const task_fn task_fns[] = {" + ", ".join(tasks) + "};", f"const int n_tasks = {len(tasks)};"]
    for symbol, kernel in direct.items():
        table += _direct_wrapper(symbol, kernel)
    names = [_direct_name(symbol) for symbol in direct]
    table += ["const char *const direct_names[] = {" + ", ".join(f'"{n}"' for n in names or ["-"]) + "};"]
    table += ["const direct_fn direct_fns[] = {" + ", ".join(names or ["0"]) + "};"]
    table += [f"const int n_direct = {len(names)};"]
    (work / "tasks.c").write_text("\n".join(table) + "\n")
    exe = work / "harness"
    cmd = [CROSS_CC, "-O1", "-static", str(HARNESS), str(work / "tasks.c"), str(work / "module.o"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True)
    return exe


def build_harness(module: KernelModule, isa: IsaSpec, work: Path) -> Path:
    text, _ = module.build(isa)
    tasks = [ir_parallel.task_symbol(module.symbol(k, isa)) for k in module.kernels]
    direct = {module.symbol(k, isa): k for k in module.kernels if not isinstance(k.ret, ir.VoidType)}
    return _link(work, jit.compile_object(text, isa), tasks, direct)


def qemu_library(isa_name: str, work: Path, arrays: Callable[[], Iterable[object]]) -> KernelLibrary:
    """The model library for ``isa_name`` as a ``KernelLibrary`` whose forks run under qemu
    (its drivers, packers and checks are the real ones)."""
    isa = ISAS[isa_name]
    text, symbols = build_module(isa)
    exe = _link(work, jit.compile_object(text, isa), [symbols[f"{role}_task"] for role in PARALLEL_ROLES])
    lib = KernelLibrary.__new__(KernelLibrary)
    lib.isa, lib.threads = isa, 2
    lib.int_tile, lib.float_tile = TILES[isa_name]

    def params(role: str) -> list[tuple[str, bool]]:
        head = re.search(rf'define void @"?{re.escape(symbols[role])}"?\((.*?)\)', text).group(1)
        return [(name, ty == "ptr") for ty, name in re.findall(r'(\w+)(?: \w+)* %"?(\w+)"?', head)]

    lib.fork = lambda role, items, same_op=False: QemuTasks(exe, symbols[f"{role}_task"], params(role), arrays).run(
        items
    )
    return lib


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> Callable[[KernelModule, str], Path]:
    built: dict[tuple[str, str], Path] = {}

    def get(module: KernelModule, isa_name: str) -> Path:
        key = (module.name, isa_name)
        if key not in built:
            built[key] = build_harness(module, ISAS[isa_name], tmp_path_factory.mktemp(f"{module.name}_{isa_name}"))
        return built[key]

    return get


# (lengths, n_q, n_kv, d, dv, half_window) from the host suite: ragged T, window edges, grouped
# heads, the key and query tiles, a scalar tail for ragged value widths
ATTENTION_CASES = [
    ([1, 2, 31, 33], 3, 1, 64, 64, None),
    ([1, 2, 31, 33], 3, 1, 24, 24, 2),
    ([95, 96, 97, 130], 1, 1, 8, 24, 64),
    ([63, 64, 65, 129], 2, 2, 8, 8, 65),
    ([9], 2, 1, 8, 8, 0),
    ([70], 6, 3, 20, 36, 16),
]


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"T{'-'.join(map(str, c[0]))}_h{c[1]}/{c[2]}_hw{c[5]}")
def test_neon_attention_matches_float64(harnesses, isa_name, case):
    lengths, n_q, n_kv, d, dv, hw = case
    q, k, v, starts, lens = packed(lengths, n_q, n_kv, d, dv, seed=len(lengths) * d)
    out = np.full((q.shape[0], n_q * dv), np.nan, np.float32)
    cache: dict = {}
    native = QemuNative(
        A.ATTENTION, ISAS[isa_name], harnesses(A.ATTENTION_MODULE, isa_name), lambda: [q, k, v, out, *cache.values()]
    )
    got = A.ATTENTION.drive(native, q, k, v, starts, lens, hw, threads=2, cache=cache, out=out)
    assert native.runs == 1
    ref = attention_oracle(q, k, v, starts, lens, hw)
    assert np.abs(got - ref).max() <= 3e-6 * np.abs(ref).max()


ENCODER_CASES = [([2, 1], 3, 32), ([8, 9, 7], 3, 16), ([31, 33], 4, 64), ([17, 16], 2, 7)]


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("lens,h,d", ENCODER_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_neon_encoder_attention_matches_float64(harnesses, isa_name, lens, h, d, with_bias):
    rng = np.random.default_rng(len(lens) * 100 + d)
    lengths = np.array(lens, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    t = int(lengths.sum())
    y, qb = product((rng.standard_normal((t, 3 * h * d + 5)) * 2).astype(np.float32), rng)
    bias = rng.standard_normal((h, max(lens) + 2, max(lens) + 2)).astype(np.float32) if with_bias else None
    out = np.full((t, h * d), np.nan, np.float32)
    exe = harnesses(EA.ENCODER_ATTENTION_MODULE, isa_name)
    native = QemuNative(EA.ENCODER_ATTENTION, ISAS[isa_name], exe, lambda: [y, qb, starts, lengths, bias, out])
    got = EA.ENCODER_ATTENTION.drive(native, y, qb, t, h, d, starts, lengths, 0.2, bias, threads=2, out=out)
    want = encoder_oracle(y + qb, h, d, starts, lengths, 0.2, bias)
    assert np.abs(got - want).max() <= 2e-5


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("scale", [1.0, 768**0.5])
def test_neon_gather_rows_equal_the_numpy_lookup(harnesses, isa_name, qtype, scale):
    rng = np.random.default_rng(3)
    rows, d = 50, 96
    raw = random_raw(qtype, rows, d, rng) if qtype == Q.Q8_0 else rng.standard_normal((rows, d)).astype(np.float32)
    table = G.GatherTable(np.ascontiguousarray(raw), qtype, rows, d)
    index = rng.integers(0, rows, 37).astype(np.int64)
    out = np.full((index.size, d), np.nan, np.float32)
    exe = harnesses(G.GATHER_MODULE, isa_name)
    native = QemuNative(G.GATHER, ISAS[isa_name], exe, lambda: [table.data, index, out])
    got = G.GATHER.drive(native, table, index, scale, threads=2, out=out)
    np.testing.assert_array_equal(got, G.gather_reference(table, index, scale))


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_gelu_erf_and_layer_norm(tmp_path, isa_name):
    """The BERT family's element-wise kernels of the model library (the NEON harness of
    ``test_neon_emulation`` does not reach them), against float64."""
    from tests.runtime.test_encoder_ops import _gelu64, _ln64

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(1001) * 4).astype(np.float32)
    x[:3] = [0.0, -30.0, 30.0]
    w, b = rng.standard_normal(129).astype(np.float32), rng.standard_normal(129).astype(np.float32)
    rows = (rng.standard_normal((37, 129)) * 3 + 40).astype(np.float32)
    rows[:, 0] *= 30  # an outlier feature over a large mean
    lib = qemu_library(isa_name, tmp_path, lambda: [x, w, b, rows])
    assert np.abs(KernelLibrary.gelu_erf(lib, x) - _gelu64(x)).max() < 1e-6
    np.testing.assert_allclose(
        KernelLibrary.layer_norm(lib, rows, w, b, 1e-12), _ln64(rows, w, b, 1e-12), rtol=3e-6, atol=2e-5
    )


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("t", [1, 2, 31, 33])
def test_neon_bias_gelu_matmul(tmp_path, isa_name, t):
    """The BERT FFN's down product with its bias + exact-GELU prologue, against the numpy twin."""
    from embedpipe.codegen import fused
    from embedpipe.codegen.encoder_fused import combine_reference
    from tests.codegen.test_fused import _assert_product_close

    rng = np.random.default_rng(t + 1)
    k, n = 96 + 32 * (t % 2), 80
    codes = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
    y = (rng.standard_normal((t, k)) * 4).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    out = aligned_empty((t, n), np.float32, 64)
    out[...] = np.nan
    weight: list = []
    lib = qemu_library(isa_name, tmp_path, lambda: [y, bias, out, *weight[0].packed])
    weight.append(KernelLibrary.prepare_int8(lib, codes, scale))
    fused.bias_gelu_matmul(weight[0], y, bias, out=out)
    _assert_product_close(out, combine_reference(y, bias, True), codes.astype(np.float32) * scale[:, None])


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("t", "d"), [(1, 32), (33, 384), (31, 40)])
def test_neon_residual_norm_and_combine(harnesses, isa_name, t, d):
    """The encoder's standalone LayerNorm (with the extension by selected blocks' residuals)
    and its bias (+ exact GELU) epilogue."""
    from embedpipe.codegen import encoder_fused as EF
    from tests.codegen.test_encoder_fused import gelu64, layer_norm64, operands, selections

    isa, exe = ISAS[isa_name], harnesses(EF.ENCODER_MODULE, isa_name)
    x, bias, res, w, beta = operands(t, d, t * 1000 + d)
    want = layer_norm64(x.astype(np.float64) + bias + res, w, beta, 1e-12)
    for extend in selections(d, t + d):
        known = [x, bias, res, w, beta, getattr(extend, "array", None)]
        native = QemuNative(EF.RESIDUAL_NORM, isa, exe, lambda known=known: known)
        out, ext = EF.RESIDUAL_NORM.drive(native, x, bias, res, w, beta, 1e-12, extend, threads=2)
        assert np.abs(out - want).max() <= 2e-5 * (1 + np.abs(want).max())
        if extend is not None and extend.blocks:
            assert np.array_equal(ext[:, :d], out)
            hi_lo = EF.extend_reference(out, extend)  # the residuals of the very rows it normalized
            assert np.mean(np.isclose(ext[:, d:], hi_lo[:, d:], rtol=1e-4, atol=1e-6 * np.abs(out).max())) > 0.99
    y = (np.random.default_rng(t).standard_normal((t, d)) * 3).astype(np.float32)
    for gelu in (False, True):
        native = QemuNative(EF.COMBINE, isa, exe, lambda: [y, bias])
        got = EF.COMBINE.drive(native, y, bias, gelu, threads=2)
        s = y.astype(np.float64) + bias
        assert np.abs(got - (gelu64(s) if gelu else s)).max() <= 2e-6 * (1 + np.abs(s).max())


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int8])
def test_neon_rowdot_and_topk(harnesses, isa_name, dtype):
    """Brute-force search's kernels: row dot products of fp32/int16/int8 codes, then top-k."""
    from embedpipe.codegen import rowdot as R
    from embedpipe.codegen import topk as T

    rng = np.random.default_rng(9)
    n, d = 1000, 67
    X = (rng.standard_normal((n, d)) * (1 if dtype == np.float32 else 40)).astype(dtype)
    q = rng.standard_normal(d).astype(np.float32)
    kernel, isa = R.ROWDOT[np.dtype(dtype)], ISAS[isa_name]
    got = kernel.drive(QemuNative(kernel, isa, harnesses(R.ROWDOT_MODULE, isa_name), lambda: [X, q]), X, q)
    want = X.astype(np.float64) @ q
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    scores = rng.standard_normal((5, n)).astype(np.float32)
    native = QemuNative(T.TOPK, isa, harnesses(T.TOPK_MODULE, isa_name), lambda: [scores])
    for k in (1, 10, 999):
        got_s, got_i = T.TOPK.drive(native, scores, k)
        want_s, want_i = T.topk_reference(scores, k)
        np.testing.assert_array_equal(got_s, want_s)
        np.testing.assert_array_equal(got_i, want_i)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("quant", "mode"), [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_neon_hnsw_search_matches_the_host_kernel(harnesses, isa_name, quant, mode):
    """HNSW graph search (its kernel bounds-checks every node it follows) on the same index and
    queries as the host's kernel: the same beam search, so the same neighbours but for ties."""
    from embedpipe.indexes import build_index
    from embedpipe.indexes.hnsw_kernel import HNSW_MODULE, HNSW_SEARCH, HnswKernel
    from tests.indexes.helpers import clustered, recall

    x, q = clustered(600, 24, seed=1), clustered(12, 24, seed=2)
    ix = build_index(x, kind="hnsw", quant=quant, m=8, ef_construction=40, scale_mode=mode)
    qn = ix.prepare_queries(q)
    want_s, want_r = HnswKernel.for_index(ix).search(qn, 10, 40)
    native = QemuNative(HNSW_SEARCH[quant], ISAS[isa_name], harnesses(HNSW_MODULE, isa_name), lambda: [qn])
    got_s, got_r = HnswKernel(ix, native).search(qn, 10, 40)
    assert native.runs == 1 and recall(got_r, want_r) >= 0.97
    np.testing.assert_allclose(got_s[:, 0], want_s[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_annoy_search_matches_the_host_kernel(harnesses, isa_name, monkeypatch):
    """Annoy's tree walk (bounds-checked like HNSW's, its candidate count the kernel's result)
    on the same forest and queries as the host kernel."""
    from embedpipe.indexes import annoy_kernel, build_index
    from tests.indexes.helpers import clustered

    x, q = clustered(500, 16, seed=3), clustered(6, 16, seed=4)
    ix = build_index(x, kind="annoy", n_trees=4)
    qn = ix.prepare_queries(q)
    want_s, want_r = ix._search_rows(qn, 10)
    native = QemuNative(
        annoy_kernel.ANNOY_SEARCH, ISAS[isa_name], harnesses(annoy_kernel.ANNOY_MODULE, isa_name), lambda: [qn]
    )
    monkeypatch.setattr(annoy_kernel.ANNOY_SEARCH, "native", lambda isa=None: native)
    got_s, got_r = ix._search_rows(qn, 10)
    assert native.runs == len(qn)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa_name", NEON_ISAS)
@pytest.mark.parametrize(("quant", "mode"), [("fp32", "dim"), ("int8", "dim"), ("int8", "vector")])
def test_neon_hnsw_insertion_matches_the_numpy_twin(harnesses, isa_name, quant, mode):
    """HNSW graph construction (insert and link kernels, their context and scratch arrays of
    addresses relocated too) against the numpy twin, as the host's kernels are."""
    from embedpipe.indexes.hnsw import storage_of
    from embedpipe.indexes.hnsw_build import build_graph
    from embedpipe.indexes.hnsw_insert_kernel import KERNELS, MODULES, InsertKernels
    from embedpipe.indexes.quant import quantize
    from tests.indexes.helpers import clustered

    st = storage_of(*quantize(clustered(300, 16, seed=3), quant, mode), quant, mode)
    exe, isa = harnesses(MODULES[quant], isa_name), ISAS[isa_name]
    insert, link = (QemuNative(k, isa, exe, lambda: [], nested=("ctx", "scr")) for k in KERNELS[quant])
    got = build_graph(st, 6, 40, seed=5, threads=2, kernels=InsertKernels(insert, link))
    twin = build_graph(st, 6, 40, seed=5, native=False)
    assert insert.runs > 0
    assert (got.entry, got.maxlevel) == (twin.entry, twin.maxlevel)
    assert (got.nbr0 == twin.nbr0).all(axis=1).mean() >= 0.99
    assert (got.nbru == twin.nbru).all(axis=1).mean() >= 0.99
