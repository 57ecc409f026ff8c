"""One path for every native kernel outside the model library.

A :class:`Kernel` is declared once: its name, its parameters (the IR function type), an
emitter that fills the function body with ``llvmlite.ir`` builder calls, a numpy twin and a
driver.  Kernels are grouped into a :class:`KernelModule`, which for an ISA

1. emits every kernel and a task trampoline and ``parallel`` entry point per kernel
   (``ir_parallel``) into one LLVM module; multi-item calls run on the process's one
   persistent worker pool (``ir_pool.shared_pool``),
2. compiles it through the on-disk object cache and loads it; the cache key is a digest of
   the sources that generate the module (``source_files``), the kernel declarations and the
   ISA, so a warm process loads the object without generating any IR,
3. binds each kernel with a ctypes prototype derived from its IR function type.

``kernel(*args)`` runs the driver on the compiled kernel (the driver validates, allocates and
splits the work into items for the pool: ``Native.run``), or the numpy twin when LLVM could
not build the module: that failure is logged once per module and ISA, and remembered.
``kernel.on(isa)`` is the strict form for tests and benchmarks (no fallback).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import llvmlite.ir as ir
import numpy as np

import embedpipe
from embedpipe.codegen import ir_parallel, ir_pool, jit
from embedpipe.codegen.irutil import F32, VOID, new_function
from embedpipe.codegen.isa import ISA_ENV, IsaSpec, detect_isa
from embedpipe.codegen.recorder import active_recorder, count_native_call

log = logging.getLogger(__name__)

_INT_CTYPES = {8: ctypes.c_int8, 16: ctypes.c_int16, 32: ctypes.c_int32, 64: ctypes.c_int64}


def ctype_of(ty: ir.Type) -> Any:
    """The ctypes type that passes an IR argument or return value of type ``ty``."""
    if isinstance(ty, ir.VoidType):
        return None
    if isinstance(ty, ir.PointerType):
        return ctypes.c_void_p
    if ty == F32:
        return ctypes.c_float
    if isinstance(ty, ir.DoubleType):
        return ctypes.c_double
    if isinstance(ty, ir.IntType) and ty.width in _INT_CTYPES:
        return _INT_CTYPES[ty.width]
    raise TypeError(f"no ctypes equivalent for IR type {ty}")


def cfunc_type(fnty: ir.FunctionType) -> type:
    """The ctypes prototype of an IR function type."""
    return ctypes.CFUNCTYPE(ctype_of(fnty.return_type), *(ctype_of(t) for t in fnty.args))


def prototype(params: Sequence[tuple[str, ir.Type]], ret: ir.Type = VOID) -> type:
    """The ctypes prototype of a function emitted with ``params`` (``new_function``)."""
    return cfunc_type(ir.FunctionType(ret, [t for _, t in params]))


class Kernel:
    """One native function: declaration, emitter, numpy twin and driver.

    ``emit(b, isa)`` fills ``b.function`` (created with ``params`` and ``ret``, ``b`` at its
    entry block).  ``twin``
    and ``drive`` take the same arguments; ``drive`` gets the bound :class:`Native` first.
    Kernels without them (index traversals bound to one index's arrays) are used through
    ``native()``, whose ``None`` tells the caller to run its own reference.
    """

    def __init__(
        self,
        name: str,
        params: Sequence[tuple[str, ir.Type]],
        emit: Callable[[ir.IRBuilder, IsaSpec], None],
        *,
        ret: ir.Type = VOID,
        twin: Callable[..., Any] | None = None,
        drive: Callable[..., Any] | None = None,
    ) -> None:
        self.name = name
        self.params, self.ret = tuple(params), ret
        self.emit = emit
        self.twin = twin
        self.drive = drive
        self.module: KernelModule | None = None

    def __repr__(self) -> str:
        return f"Kernel({self.name!r})"

    def native(self, isa: IsaSpec | None = None) -> Native | None:
        """The compiled kernel for ``isa`` (default: the detected one), or None when LLVM
        cannot build its module here (logged once)."""
        loaded = _registry.load(self._module(), isa or _registry.host_isa(), strict=False)
        return None if loaded is None else loaded.natives[self.name]

    def on(self, isa: IsaSpec) -> Callable[..., Any]:
        """The driver bound to the kernel compiled for ``isa``; compile errors propagate."""
        native = _registry.load(self._module(), isa, strict=True).natives[self.name]
        return lambda *args, **kw: self.drive(native, *args, **kw)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        native = self.native()
        if native is None:
            return self.twin(*args, **kw)
        return self.drive(native, *args, **kw)

    def _module(self) -> KernelModule:
        if self.module is None:
            raise RuntimeError(f"{self!r} belongs to no KernelModule")
        return self.module


class KernelModule:
    """Kernels compiled, loaded and pooled together (one LLVM module per ISA)."""

    def __init__(self, name: str, kernels: Sequence[Kernel]) -> None:
        self.name = name
        self.kernels = tuple(kernels)
        for k in self.kernels:
            k.module = self

    def ir_name(self, isa: IsaSpec) -> str:
        return f"{self.name}_{isa.name}"

    def symbol(self, kernel: Kernel, isa: IsaSpec) -> str:
        return f"{self.ir_name(isa)}__{kernel.name}"

    def parallel_symbols(self, isa: IsaSpec) -> dict[str, str]:
        """Kernel name -> the symbol of its parallel entry point (named without building IR)."""
        return {k.name: ir_parallel.parallel_symbol(ir_parallel.task_symbol(self.symbol(k, isa))) for k in self.kernels}

    def build(self, isa: IsaSpec) -> tuple[str, dict[str, str]]:
        """IR text of the module for ``isa`` and kernel name -> parallel entry symbol."""
        module = ir.Module(name=self.ir_name(isa))
        module.triple = isa.triple
        fns = []
        for k in self.kernels:
            fn, b = new_function(module, self.symbol(k, isa), k.params, k.ret)
            k.emit(b, isa)
            fns.append(fn)
        parallel = ir_parallel.emit_entry_points(module, fns)
        symbols = {k.name: parallel[fn.name] for k, fn in zip(self.kernels, fns)}
        if symbols != self.parallel_symbols(isa):
            raise RuntimeError(f"{self.name}: parallel entry points {symbols} differ from their predicted names")
        return str(module), symbols

    def source_files(self) -> list[Path]:
        """The embedpipe source files that can shape this module's IR: the modules defining
        its kernels' emitters and everything they import from embedpipe, transitively."""
        roots = frozenset({sys.modules[k.emit.__module__].__file__ for k in self.kernels} | {__file__})
        return [Path(p) for p in sorted(imported_sources(roots))]

    def cache_key(self, isa: IsaSpec) -> str:
        """Object-cache key of this module for ``isa``: digest of the generator sources, the
        kernel declarations (name, parameter and return types) and every IsaSpec field; equal
        keys mean equal IR, so a warm process never generates the IR just to name it."""
        digest = sources_digest(self.source_files())
        decl = [(k.name, [(n, str(t)) for n, t in k.params], str(k.ret)) for k in self.kernels]
        flags = ",".join(sorted(isa.required_flags))
        spec = f"{isa.name}:{isa.arch}:{isa.lanes}:{isa.dot}:{flags}"
        return jit.cache_key(f"kernel-module:{self.name}:{digest}:{decl}:{spec}", isa)


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(embedpipe.__file__))
_IMPORT = re.compile(
    rb"^\s*(?:import\s+(embedpipe[\w.]*)|from\s+(embedpipe[\w.]*)\s+import\s+(\([^)]*\)|[^\n]*))", re.M
)


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is not None:
        return path
    base = os.path.join(_PACKAGE_ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


@functools.cache
def imported_sources(roots: frozenset[str]) -> frozenset[str]:
    """``roots`` and every embedpipe source file they import (at module or function level,
    read from the source text), transitively."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, "rb") as fh:
            imports = _IMPORT.findall(fh.read())
        for plain, package, names in imports:
            name = (plain or package).decode()
            found = _module_file(name)
            if found is None:
                continue
            todo.append(found)
            if package and found.endswith("__init__.py"):  # `from embedpipe.codegen import ir_pool`
                todo += filter(None, (_module_file(f"{name}.{n}") for n in re.findall(r"\w+", names.decode())))
    return frozenset(seen)


def sources_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over source files (path within the package, then bytes, in sorted order): the
    generator part of an object-cache key, so equal digests mean equal generated IR."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.relative_to(_PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# Native calls made by this process (``Native`` calls and runs, library forks): one integer
# increment per call, read by ``bench runtime`` as calls per forward.
class Native:
    """One loaded kernel: call it on this thread, or ``run`` items on the module's pool."""

    def __init__(self, kernel: Kernel, isa: IsaSpec, call: Any, fork: Any, task: int = 0, pool: int = 0) -> None:
        self.kernel, self.isa = kernel, isa
        self._call, self._fork, self._pool = call, fork, pool
        # the task trampoline (``void* task(i64* words)``) that a recorded step calls
        self.task_address = task
        names = [name for name, _ in kernel.params]
        self._counter = names.index("counter") if "counter" in names else None
        # ``run`` items carry fp32 arguments as ``f32_word`` bits (what the fork trampolines
        # decode); a direct call must turn those back into floats for the ctypes prototype.
        self._float_args = tuple(i for i, (_, t) in enumerate(kernel.params) if isinstance(t, ir.FloatType))

    def __call__(self, *args: Any) -> Any:
        count_native_call()
        return self._call(*args)

    def run(self, items: Sequence[Sequence[int]]) -> None:
        """Run the kernel once per item (its arguments as 64-bit words: addresses, integers,
        ``f32_word(x)``), item 0 on this thread and the rest on the persistent workers, in one
        GIL-free call."""
        rec = active_recorder()
        if rec is not None:
            rec.add(self.task_address, items, self._counter)
            return
        count_native_call()
        if len(items) == 1:
            args = list(items[0])
            for i in self._float_args:
                args[i] = float(np.uint32(args[i]).view(np.float32))
            self._call(*args)
            return
        words = np.array(items, dtype=np.int64)
        self._fork(self._pool, words.ctypes.data, words.shape[1] * 8, len(words))

    def run_packed(self, words: int, stride: int, n: int) -> None:
        """``run`` over ``n`` items already packed as rows of 64-bit words (``stride`` bytes
        apart) at address ``words``: callers that keep one packed block and change only a few
        words per call avoid converting every argument on every call."""
        count_native_call()
        self._fork(self._pool, words, stride, n)


def f32_word(value: float) -> int:
    """An fp32 argument as the 64-bit word the task trampolines decode."""
    return int(np.float32(value).view(np.uint32))


class _Loaded:
    def __init__(self, module: KernelModule, isa: IsaSpec) -> None:
        parallel = module.parallel_symbols(isa)
        names = {k.name: module.symbol(k, isa) for k in module.kernels}
        tasks = {k.name: ir_parallel.task_symbol(names[k.name]) for k in module.kernels}
        obj = jit.compile_cached(module.cache_key(isa), lambda: module.build(isa)[0], isa)
        addrs = jit.host_engine().load(obj, [*names.values(), *parallel.values(), *tasks.values()])
        pool = ir_pool.shared_pool(isa)
        fork_type = prototype(ir_parallel.PARALLEL_PARAMS)
        self.natives = {
            k.name: Native(
                k,
                isa,
                prototype(k.params, k.ret)(addrs[names[k.name]]),
                fork_type(addrs[parallel[k.name]]),
                addrs[tasks[k.name]],
                pool,
            )
            for k in module.kernels
        }


class _Registry:
    """Every loaded (module, ISA) pair of the process, and the pairs LLVM failed to build."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], _Loaded | None] = {}
        self._host: tuple[str | None, IsaSpec] | None = None

    def host_isa(self) -> IsaSpec:
        """``detect_isa()``, remembered per value of ``$EMBEDPIPE_ISA`` (kernels are called
        per query: reading /proc/cpuinfo each time would cost more than a small search)."""
        wanted = os.environ.get(ISA_ENV)
        host = self._host
        if host is None or host[0] != wanted:
            host = self._host = (wanted, detect_isa())
        return host[1]

    def load(self, module: KernelModule, isa: IsaSpec, strict: bool) -> _Loaded | None:
        key = (module.name, isa.name)
        loaded = self._loaded.get(key)
        if loaded is not None:  # the steady state: no lock
            return loaded
        with self._lock:
            if key in self._loaded and not (strict and self._loaded[key] is None):
                return self._loaded[key]
            try:
                loaded = _Loaded(module, isa)
            except RuntimeError as exc:  # what llvmlite raises for IR, target and load errors
                if strict:
                    raise
                log.warning("%s kernels unavailable for %s (%s); using the numpy twins", module.name, isa.name, exc)
                loaded = None
            self._loaded[key] = loaded
            return loaded

    def forget(self, module: KernelModule) -> None:
        """Drop what is remembered about ``module`` (tests that force a failure)."""
        with self._lock:
            for key in [k for k in self._loaded if k[0] == module.name]:
                del self._loaded[key]


_registry = _Registry()
forget = _registry.forget
host_isa = _registry.host_isa
