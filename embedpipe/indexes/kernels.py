"""JIT row-dot kernels for scanning stored vectors (fp32 / int16 / int8) against one query.

``out[i] = Σ_j float(X[i, j]) · q[j]`` — four rows at a time share each 16-lane query load;
the codes are widened in registers (``sitofp``), so an int8 index is scanned from its 1-byte
storage without ever materializing a float copy. Textual LLVM IR, compiled for the host ISA by
`embedpipe.codegen.jit` (disk-cached objects). BLAS already wins for many queries at once, so
this is used for single / few-query search; numpy is the fallback and the test oracle.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)

LANES = 16
_ELEM_IR = {np.dtype(np.float32): "float", np.dtype(np.int16): "i16", np.dtype(np.int8): "i8"}
_lock = threading.Lock()
_kernels: dict[np.dtype, object] = {}
_pool: ThreadPoolExecutor | None = None
_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                        ctypes.c_void_p, ctypes.c_void_p)


def _rows_block(elt: str, rows: int, tag: str, entry: str, nxt: str) -> str:
    """IR for a loop over `rows` rows at a time from %i0 (phi) while i + rows <= n."""
    vt = f"<{LANES} x {elt}>"
    ft = f"<{LANES} x float>"
    conv = (lambda r: f"  %xf{r} = sitofp {vt} %x{r} to {ft}\n") if elt != "float" else \
        (lambda r: f"  %xf{r} = bitcast {ft} %x{r} to {ft}\n")
    s = [f"{tag}.head:\n  %{tag}.i = phi i64 [%start.{tag}, %{entry}], [%{tag}.inext, %{tag}.end]\n"
         f"  %{tag}.lim = sub i64 %n, {rows - 1}\n"
         f"  %{tag}.ok = icmp slt i64 %{tag}.i, %{tag}.lim\n"
         f"  br i1 %{tag}.ok, label %{tag}.body, label %{nxt}\n"
         f"{tag}.body:\n  %{tag}.off = mul i64 %{tag}.i, %d\n"
         f"  %{tag}.p0 = getelementptr {elt}, ptr %X, i64 %{tag}.off\n"]
    for r in range(1, rows):
        s.append(f"  %{tag}.p{r} = getelementptr {elt}, ptr %{tag}.p{r - 1}, i64 %d\n")
    s.append(f"  br label %{tag}.k\n{tag}.k:\n  %{tag}.j = phi i64 [0, %{tag}.body], "
             f"[%{tag}.jn, %{tag}.k]\n")
    for r in range(rows):
        s.append(f"  %{tag}.a{r} = phi {ft} [zeroinitializer, %{tag}.body], "
                 f"[%{tag}.an{r}, %{tag}.k]\n")
    s.append(f"  %{tag}.qp = getelementptr float, ptr %q, i64 %{tag}.j\n"
             f"  %{tag}.qv = load {ft}, ptr %{tag}.qp, align 4\n")
    for r in range(rows):
        s.append(f"  %{tag}.xp{r} = getelementptr {elt}, ptr %{tag}.p{r}, i64 %{tag}.j\n"
                 f"  %x{r} = load {vt}, ptr %{tag}.xp{r}, align 1\n".replace("%x", f"%{tag}.x"))
        s.append(conv(r).replace("%x", f"%{tag}.x"))
        s.append(f"  %{tag}.an{r} = call {ft} @llvm.fmuladd.v{LANES}f32({ft} %{tag}.xf{r}, "
                 f"{ft} %{tag}.qv, {ft} %{tag}.a{r})\n")
    s.append(f"  %{tag}.jn = add i64 %{tag}.j, {LANES}\n"
             f"  %{tag}.kc = icmp slt i64 %{tag}.jn, %d\n"
             f"  br i1 %{tag}.kc, label %{tag}.k, label %{tag}.end\n{tag}.end:\n")
    for r in range(rows):
        s.append(f"  %{tag}.s{r} = call reassoc float @llvm.vector.reduce.fadd.v{LANES}f32("
                 f"float 0.0, {ft} %{tag}.an{r})\n"
                 f"  %{tag}.oi{r} = add i64 %{tag}.i, {r}\n"
                 f"  %{tag}.op{r} = getelementptr float, ptr %out, i64 %{tag}.oi{r}\n"
                 f"  store float %{tag}.s{r}, ptr %{tag}.op{r}, align 4\n")
    s.append(f"  %{tag}.inext = add i64 %{tag}.i, {rows}\n  br label %{tag}.head\n")
    return "".join(s)


def dot_ir(dtype: np.dtype) -> str:
    """Module text with `ep_rowdot`: rows in blocks of 4, then the remaining rows one by one.

    Requires d to be a positive multiple of 16 (callers check)."""
    elt = _ELEM_IR[np.dtype(dtype)]
    ft = f"<{LANES} x float>"
    return (
        f"declare {ft} @llvm.fmuladd.v{LANES}f32({ft}, {ft}, {ft})\n"
        f"declare float @llvm.vector.reduce.fadd.v{LANES}f32(float, {ft})\n"
        "define void @ep_rowdot(ptr noalias %X, i64 %n, i64 %d, ptr noalias %q, "
        "ptr noalias %out) {\nentry:\n  %start.r4 = add i64 0, 0\n  br label %r4.head\n"
        + _rows_block(elt, 4, "r4", "entry", "mid")
        + "mid:\n  %start.r1 = add i64 %r4.i, 0\n  br label %r1.head\n"
        + _rows_block(elt, 1, "r1", "mid", "done")
        + "done:\n  ret void\n}\n")


def _load(dtype: np.dtype):
    from embedpipe.codegen.isa import detect_isa
    from embedpipe.codegen.jit import compile_object, host_engine

    obj = compile_object(dot_ir(dtype), detect_isa())
    addr = host_engine().load(obj, ["ep_rowdot"])["ep_rowdot"]
    return _SIG(addr)


def get_rowdot(dtype: np.dtype):
    """The compiled kernel for `dtype`, or None when the JIT is unavailable here."""
    dtype = np.dtype(dtype)
    with _lock:
        if dtype not in _kernels:
            try:
                _kernels[dtype] = _load(dtype)
            except Exception as exc:  # no LLVM target, unwritable cache, ...: numpy fallback
                log.warning("row-dot JIT kernel unavailable (%s); using numpy", exc)
                _kernels[dtype] = None
        return _kernels[dtype]


def _threads() -> int:
    from embedpipe.codegen.isa import default_threads
    return default_threads()


def rowdot(X: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Σ_j X[i, j]·q[j] for every row, float32 (n,). X: C-contiguous (n, d) fp32/int16/int8."""
    global _pool
    n, d = X.shape
    q = np.ascontiguousarray(q, dtype=np.float32)
    out = np.empty(n, np.float32) if out is None else out
    kern = get_rowdot(X.dtype) if (d % LANES == 0 and d > 0 and X.flags.c_contiguous) else None
    if kern is None:
        return np.dot(X.astype(np.float32, copy=False), q, out=out)
    threads = _threads() if n >= 4096 else 1
    if threads == 1:
        kern(X.ctypes.data, n, d, q.ctypes.data, out.ctypes.data)
        return out
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embedpipe-rowdot")
    step = ((n + threads - 1) // threads + 3) // 4 * 4
    futs = [_pool.submit(kern, X[s:].ctypes.data, min(step, n - s), d, q.ctypes.data,
                         out[s:].ctypes.data) for s in range(0, n, step)]
    for f in futs:
        f.result()
    return out
