"""llvmlite glue: optimize and compile IR for an :class:`IsaSpec`, cache objects on disk, load.

Compiled object files are cached under ``kernels/`` in the embedpipe cache directory
(``$EMBEDPIPE_CACHE_DIR``, else ``~/.cache/embedpipe``; ``$EMBEDPIPE_KERNEL_CACHE`` moves them
on their own, see ``runtime.cache_root``), keyed by SHA-256 of the IR text, the ISA's triple, CPU and
feature string, and the llvmlite version, so a warm process loads machine code without running
LLVM's optimizer or code generator. Every cached file is checked against a SHA-256 taken when it
was written (a trailer on objects, a ``.sha256`` file beside libraries) before it is loaded: a
damaged or replaced file is rebuilt, never executed.  Where a C compiler driver is found, each object is also
linked once into a shared library beside it and loaded with ctypes: a warm process then never
loads LLVM at all (importing ``llvmlite.binding`` maps and relocates a 170 MB library, ~50 MB of
it resident). Otherwise objects are loaded into one MCJIT engine per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import llvmlite

from embedpipe.codegen.isa import IsaSpec
from embedpipe.runtime import cache_root

if TYPE_CHECKING:
    from llvmlite.binding import TargetMachine

log = logging.getLogger(__name__)

CACHE_ENV = cache_root.KERNELS_ENV
LINK_ENV = "EMBEDPIPE_KERNEL_LINK"  # "0": always load objects into MCJIT (no shared libraries)
OBJECT_TRAILER = b"EPKO1"  # cached object = ELF bytes + this tag + SHA-256 of the ELF bytes
OBJECT_SUFFIX = ".sealed.o"  # objects cached before the trailer existed are never read
_lock = threading.Lock()
_initialized = False


def _binding():
    """``llvmlite.binding``, imported only to compile or to load into MCJIT."""
    import llvmlite.binding as llvm

    return llvm


def _init_llvm() -> None:
    global _initialized
    if not _initialized:
        llvm = _binding()
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _initialized = True


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The kernel cache: ``kernels/`` in the cache root (``runtime.cache_root.kernels_dir``)."""
    return cache_root.kernels_dir(root)


def cache_files(directory: Path | None = None) -> list[Path]:
    """Every file in the kernel cache: objects (of any layout), libraries and their digests."""
    directory = cache_dir() if directory is None else Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def clear_cache(directory: Path | None = None) -> tuple[int, int]:
    """Delete the kernel cache (rebuilt on the next kernel load); returns (files, bytes) removed.
    Libraries this process has loaded stay mapped: unlinking never touches their pages."""
    files, size = 0, 0
    for path in cache_files(directory):
        try:
            size += path.stat().st_size
            path.unlink()
            files += 1
        except OSError:
            pass
    return files, size


def target_machine(isa: IsaSpec) -> TargetMachine:
    _init_llvm()
    target = _binding().Target.from_triple(isa.triple)
    return target.create_target_machine(cpu=isa.cpu, features=isa.features, opt=3, reloc="pic", codemodel="default")


def cache_key(ir_text: str, isa: IsaSpec) -> str:
    """SHA-256 over the IR (or a fingerprint of whatever generates it), the target and the
    llvmlite version."""
    h = hashlib.sha256()
    for part in (ir_text, isa.triple, isa.cpu, isa.features, llvmlite.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class CompileStats:
    """Counters that tests and the benchmark read: how many objects were built vs loaded."""

    compiled: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)


STATS = CompileStats()


def compile_object(ir_text: str, isa: IsaSpec) -> bytes:
    """Optimize (O3) and compile ``ir_text`` for ``isa``; returns ELF object bytes (cached)."""
    return compile_cached(cache_key(ir_text, isa), lambda: ir_text, isa)


def compile_cached(key: str, build_ir: Callable[[], str], isa: IsaSpec) -> bytes:
    """The object cached under ``key``, or compile ``build_ir()`` and cache it.

    Callers that can name their IR without generating it (by fingerprinting the generator's
    sources) skip IR generation entirely on a warm start.
    """
    path = cache_dir() / f"{key}{OBJECT_SUFFIX}"
    start = time.perf_counter()
    data = _read_verified_object(path)
    if data is not None:
        STATS.cache_hits += 1
        STATS.keys.append(key)
        return data
    ir_text = build_ir()
    tm = target_machine(isa)
    llvm = _binding()
    module = llvm.parse_assembly(ir_text)
    module.triple = isa.triple
    module.data_layout = str(tm.target_data)
    module.verify()
    pto = llvm.PipelineTuningOptions(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)
    data = tm.emit_object(module)
    _write_atomic(path, data + OBJECT_TRAILER + hashlib.sha256(data).digest())
    STATS.compiled += 1
    STATS.seconds += time.perf_counter() - start
    STATS.keys.append(key)
    return data


def _read_verified_object(path: Path) -> bytes | None:
    """The object bytes cached at ``path`` when its trailer's digest matches them, else None
    (missing, truncated, damaged, or written by an older layout: the caller recompiles)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    tail = len(OBJECT_TRAILER) + 32
    data, tag, digest = raw[:-tail], raw[-tail:-32], raw[-32:]
    if len(raw) > tail and tag == OBJECT_TRAILER and hashlib.sha256(data).digest() == digest:
        return data
    log.warning("kernel object %s fails its checksum; compiling it again", path)
    return None


def emit_assembly(ir_text: str, isa: IsaSpec) -> str:
    """Optimized assembly, for inspection and tests that check instruction selection."""
    tm = target_machine(isa)
    llvm = _binding()
    module = llvm.parse_assembly(ir_text)
    module.triple = isa.triple
    module.data_layout = str(tm.target_data)
    pb = llvm.create_pass_builder(tm, llvm.PipelineTuningOptions(speed_level=3))
    pb.getModulePassManager().run(module, pb)
    return tm.emit_assembly(module)


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs recompiles
        log.debug("kernel cache not writable (%s): %s", path, exc)


class _Mcjit:
    """One MCJIT engine holding every object loaded into it."""

    def __init__(self) -> None:
        llvm = _binding()
        _init_llvm()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        tm = llvm.Target.from_default_triple().create_target_machine(opt=0)
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        self._objects: list = []

    def load(self, obj: bytes, symbols: list[str]) -> dict[str, int]:
        ref = _binding().ObjectFileRef.from_data(obj)
        self._engine.add_object_file(ref)
        self._objects.append(ref)
        self._engine.finalize_object()
        return {name: self._engine.get_function_address(name) for name in symbols}


def _linker() -> str | None:
    return next((found for cc in ("cc", "gcc", "clang") if (found := shutil.which(cc))), None)


def link_shared(obj: bytes, path: Path) -> bool:
    """Link a (position-independent) kernel object into the shared library ``path``, atomically;
    False when no compiler driver is found or it fails (then MCJIT loads the object)."""
    cc = _linker()
    if cc is None:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".link-") as tmp:
            src, out = Path(tmp) / "kernels.o", Path(tmp) / "kernels.so"
            src.write_bytes(obj)
            cmd = [cc, "-shared", "-Wl,-z,noexecstack", "-o", str(out), str(src), "-lpthread"]
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            _write_atomic(_digest_path(path), hashlib.sha256(out.read_bytes()).hexdigest().encode())
            os.replace(out, path)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("kernel object not linked (%s); loading it with MCJIT", exc)
        return False


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def library_is_intact(path: Path) -> bool:
    """True when the shared library at ``path`` has the SHA-256 recorded when it was linked."""
    return _library_check(path) == "intact"


def _library_check(path: Path) -> str:
    """ "intact", "unrecorded" (no digest: linked by a build before digests existed, or the
    digest was lost) or "damaged" (the bytes differ from the digest)."""
    try:
        expected = _digest_path(path).read_bytes().strip().decode("ascii", "replace")
    except OSError:
        return "unrecorded"
    try:
        return "intact" if hashlib.sha256(path.read_bytes()).hexdigest() == expected else "damaged"
    except OSError:
        return "damaged"


class HostEngine:
    """Loads compiled kernel objects into this process: as shared libraries linked once and
    cached (no LLVM in a warm process), else into one MCJIT engine."""

    def __init__(self) -> None:
        self._mcjit: _Mcjit | None = None
        self._libraries: list[ctypes.CDLL] = []

    def _shared(self, obj: bytes, symbols: list[str]) -> dict[str, int] | None:
        if os.environ.get(LINK_ENV) == "0":
            return None
        path = cache_dir() / f"{hashlib.sha256(obj).hexdigest()}.so"
        state = _library_check(path) if path.is_file() else "absent"
        if state in ("damaged", "unrecorded"):
            report = log.warning if state == "damaged" else log.debug
            report(
                "kernel library %s %s; linking it again",
                path,
                "fails its checksum" if state == "damaged" else "has no recorded digest",
            )
            path.unlink(missing_ok=True)
        if not path.is_file() and not link_shared(obj, path):
            return None
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
            addrs = {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in symbols}
        except (OSError, AttributeError) as exc:  # damaged or foreign file: link again next time
            log.warning("kernel library %s unusable (%s); loading the object with MCJIT", path, exc)
            path.unlink(missing_ok=True)
            return None
        self._libraries.append(lib)  # never unloaded: the addresses stay valid
        return addrs

    def load(self, obj: bytes, symbols: list[str]) -> dict[str, int]:
        """Load an object file and return the addresses of ``symbols``."""
        with _lock:
            addrs = self._shared(obj, symbols)
            if addrs is None:
                if self._mcjit is None:
                    self._mcjit = _Mcjit()
                addrs = self._mcjit.load(obj, symbols)
        missing = [n for n, a in addrs.items() if not a]
        if missing:
            raise RuntimeError(f"symbols not found after loading kernel object: {missing}")
        return addrs


_engine: HostEngine | None = None


def host_engine() -> HostEngine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = HostEngine()
        return _engine
