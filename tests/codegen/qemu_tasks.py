"""Running the kernels of an AArch64 object under qemu-user on the very items their Python
drivers make: ``QemuNative`` stands in for a loaded kernel of a ``KernelModule`` and
``qemu_library`` for the model library, over the generic ``neon_tasks_harness.c``. The NEON
tests of ``tests/codegen`` and ``tests/indexes`` share it.

Needs ``scripts/install_emulation.sh`` (qemu-user, gcc-aarch64-linux-gnu); ``requires_emulation``
skips without them.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import llvmlite.ir as ir
import numpy as np
import pytest

from embedpipe.codegen import ir_parallel, ir_pool, jit, scratch
from embedpipe.codegen.isa import ISAS, IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule
from embedpipe.codegen.library import PARALLEL_ROLES, TILES, KernelLibrary, build_module
from tests.codegen.test_neon_emulation import CROSS_CC, QEMU, SYSROOT, requires_emulation

__all__ = ["NEON_ISAS", "HarnessCache", "QemuNative", "qemu_library", "requires_emulation"]

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
        data, at = run_job(self.exe, self.task, buffers, words, relocs, [r[:4] for r in inner])
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


def run_job(
    exe: Path,
    task: str,
    buffers: list[np.ndarray],
    words: np.ndarray,
    relocs: list[tuple[int, ...]],
    inner: list[tuple[int, ...]] = (),
    functions: list[tuple[int, int, int]] = (),
    timeout: float = 300,
) -> tuple[bytes, int]:
    """Run ``task`` of the harness ``exe`` under qemu on the items ``words`` (one row each) with
    the job file's relocations (see ``neon_tasks_harness.c``); every writable buffer gets its
    bytes back. Returns the output file's bytes and where the buffers end in it."""
    job, out = exe.parent / "job.bin", exe.parent / "out.bin"
    parts = [np.int64(len(buffers)).tobytes()]
    for b in buffers:
        data = np.ascontiguousarray(b).tobytes()
        parts += [np.int64(len(data)).tobytes(), data, b"\0" * (-len(data) % 8)]
    parts += [np.array(words.shape, np.int64).tobytes(), words.tobytes()]
    for table, width in ((relocs, 4), (inner, 4), (functions, 3)):
        parts += [np.int64(len(table)).tobytes(), np.array(table, np.int64).reshape(-1, width).tobytes()]
    job.write_bytes(b"".join(parts))
    argv = [QEMU, "-L", str(SYSROOT), str(exe), task, str(job), str(out)]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    data, at = out.read_bytes(), 0
    for b in buffers:
        if b.flags.writeable and b.flags.c_contiguous:
            b.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, b.nbytes, at)
        at += b.nbytes
    return data, at


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
        self.kernel, self.isa = kernel, isa

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


def _link(
    work: Path,
    objects: list[bytes],
    tasks: list[str],
    direct: dict[str, Kernel] | None = None,
    parallel: bool = False,
    pool: bool = False,
) -> Path:
    """The harness linked with the ``objects``, knowing the trampolines ``tasks`` (task number =
    position), direct wrappers of the ``direct`` kernels (by symbol) that return a value, and,
    with ``parallel``, each task's fork-join entry point (``ir_parallel.parallel_symbol``);
    with ``pool``, one of the objects is the worker pool (``ir_pool.build_module``), whose
    ``run`` a ``pool:`` task name hands to the entry point."""
    direct = direct or {}
    linked = []
    for i, obj in enumerate(objects):
        linked.append(work / f"module{i}.o")
        linked[-1].write_bytes(obj)
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
    entries = [ir_parallel.parallel_symbol(t) for t in tasks] if parallel else []
    table += [f"void {e}(void *, long long *, long long, long long);" for e in entries]
    table += ["typedef void (*parallel_fn)(void *, long long *, long long, long long);"]
    table += ["const char *const parallel_names[] = {" + ", ".join(f'"{e}"' for e in entries or ["-"]) + "};"]
    table += ["const parallel_fn parallel_fns[] = {" + ", ".join(entries or ["0"]) + "};"]
    table += [f"const int n_parallel = {len(entries)};"]
    if pool:
        run = ir_pool.run_symbol(ir_pool.MODULE_NAME)
        table += [f"int {run}(void *, void *, long long, long long);", f"void *const pool_run = (void *){run};"]
    else:
        table += ["void *const pool_run = 0;"]
    (work / "tasks.c").write_text("\n".join(table) + "\n")
    exe = work / "harness"
    cmd = [CROSS_CC, "-O1", "-static", str(HARNESS), str(work / "tasks.c"), *map(str, linked), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True)
    return exe


def build_harness(module: KernelModule, isa: IsaSpec, work: Path, *others: KernelModule) -> Path:
    """The harness linked with ``module`` (and ``others``) and the worker pool: the task of
    kernel ``k`` of the modules, in order, is task number ``k``."""
    modules = [module, *others]
    objects = [jit.compile_object(m.build(isa)[0], isa) for m in modules]
    objects.append(jit.compile_object(ir_pool.build_module(isa), isa))
    tasks = [ir_parallel.task_symbol(m.symbol(k, isa)) for m in modules for k in m.kernels]
    direct = {m.symbol(k, isa): k for m in modules for k in m.kernels if not isinstance(k.ret, ir.VoidType)}
    return _link(work, objects, tasks, direct, parallel=True, pool=True)


@dataclass(frozen=True)
class LibraryHarness:
    """The model library for one ISA linked into the harness, with each role's task symbol and
    parameters (name, is a pointer), read once from its IR."""

    isa_name: str
    exe: Path
    tasks: dict[str, str]
    params: dict[str, list[tuple[str, bool]]]


def build_library_harness(isa_name: str, work: Path) -> LibraryHarness:
    isa = ISAS[isa_name]
    text, symbols = build_module(isa)
    tasks = {role: symbols[f"{role}_task"] for role in PARALLEL_ROLES}
    params = {}
    for role in PARALLEL_ROLES:
        head = re.search(rf'define void @"?{re.escape(symbols[role])}"?\((.*?)\)', text).group(1)
        params[role] = [(name, ty == "ptr") for ty, name in re.findall(r'(\w+)(?: \w+)* %"?(\w+)"?', head)]
    return LibraryHarness(isa_name, _link(work, [jit.compile_object(text, isa)], list(tasks.values())), tasks, params)


def qemu_library(harness: LibraryHarness, arrays: Callable[[], Iterable[object]]) -> KernelLibrary:
    """The model library as a ``KernelLibrary`` whose forks run under qemu (its drivers,
    packers and checks are the real ones)."""
    lib = KernelLibrary.__new__(KernelLibrary)
    lib.isa, lib.threads = ISAS[harness.isa_name], 2
    lib.int_tile, lib.float_tile = TILES[harness.isa_name]

    def fork(role: str, items, same_op: bool = False) -> None:
        QemuTasks(harness.exe, harness.tasks[role], harness.params[role], arrays).run(items)

    lib.fork = fork
    return lib


class HarnessCache:
    """Harnesses built once per test module: ``cache(module, isa_name)`` for a ``KernelModule``,
    ``cache.library(isa_name)`` for the model library."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp, self._built = tmp_path_factory, {}

    def __call__(self, module: KernelModule, isa_name: str) -> Path:
        key = (module.name, isa_name)
        if key not in self._built:
            self._built[key] = build_harness(module, ISAS[isa_name], self._tmp.mktemp(f"{module.name}_{isa_name}"))
        return self._built[key]

    def library(self, isa_name: str) -> LibraryHarness:
        key = ("library", isa_name)
        if key not in self._built:
            self._built[key] = build_library_harness(isa_name, self._tmp.mktemp(f"library_{isa_name}"))
        return self._built[key]
