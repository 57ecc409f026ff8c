"""Element-wise and attention operations of the transformer (everything but weight matmuls).

Two implementations sit behind one interface, chosen by the matmul backend in use (a table,
``OPS_FOR_BACKEND``): ``NumpyOps`` (numpy + numexpr + BLAS, the reference) and ``JitOps``
(the codegen library's fp32 kernels, forked natively on the backend's threads).  Both honour
the backend's thread count: BLAS is capped per call with threadpoolctl, because OpenBLAS
threads that spin while the JIT pool runs slowed a 3-text batch ~4x.

``attention(q, k, v, plan, half_window)`` runs every sequence of a packed batch at once: on
``JitOps`` one native call of the tiled kernel (``codegen.attention``), on ``NumpyOps`` its
numpy twin, per sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

if TYPE_CHECKING:
    from embedpipe.codegen.gather import GatherTable
    from embedpipe.codegen.sequences import Sequences

_GELU_C = math.sqrt(2.0 / math.pi)
# Masked scores (BERT-family padded attention, ``encoder_ops``): finite, so fully padded query
# rows give no NaN (their output is dropped).
_MASKED = np.float32(-1e30)

_controller: ThreadpoolController | None = None

MatmulFn = Callable[[np.ndarray], np.ndarray]


class HeadShape(NamedTuple):
    """Attention head geometry of a packed Q|K|V row, and the RMS epsilon of its q/k norms."""

    n_q: int
    n_kv: int
    d: int
    dv: int
    eps: float


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Cap BLAS (OpenBLAS/MKL) threads at ``n`` for the duration of the block."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=n, user_api="blas"):
        yield


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) · weight over the last axis, in fp32."""
    mean_sq = np.einsum("...i,...i->...", x, x, dtype=np.float32) / np.float32(x.shape[-1])
    inv = 1.0 / np.sqrt(mean_sq + np.float32(eps), dtype=np.float32)
    return (x * inv[..., None]) * weight


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) ⊙ up in one pass."""
    import numexpr as ne  # the numpy reference only: the JIT path never imports it

    # Constants as float32 locals: numexpr promotes Python float literals to double.
    c, a, half, one = np.float32(_GELU_C), np.float32(0.044715), np.float32(0.5), np.float32(1.0)
    names = {"gate": gate, "up": up, "c": c, "a": a, "half": half, "one": one}
    return ne.evaluate("half * gate * (one + tanh(c * (gate + a * gate * gate * gate))) * up", local_dict=names)


class RopeTable:
    """cos/sin tables for NeoX-style rotary embeddings (rotate halves), grown on demand."""

    def __init__(self, head_dim: int, theta: float):
        self.half = head_dim // 2
        self.inv_freq = (1.0 / theta ** (np.arange(0, self.half, dtype=np.float64) * 2.0 / head_dim)).astype(np.float32)
        self._cos = np.empty((0, self.half), np.float32)
        self._sin = np.empty((0, self.half), np.float32)

    def rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The cos and sin tables of positions ``[0, n)``: (n, half) each."""
        self.tables(np.array([n - 1]))
        return self._cos[:n], self._sin[:n]

    def tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        need = int(positions.max()) + 1 if positions.size else 0
        if need > len(self._cos):
            # fp32 angles, as the reference implementation computes them.
            angles = np.arange(need, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = np.cos(angles), np.sin(angles)
        return self._cos[positions], self._sin[positions]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i+half) of the last axis; x is (S, heads, head_dim), cos/sin (S, half)."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    lo, hi = out[..., :half], out[..., half:]
    np.multiply(x1, c, out=lo)
    np.multiply(x2, c, out=hi)
    tmp = x2 * s
    lo -= tmp
    np.multiply(x1, s, out=tmp)
    hi += tmp
    return out


def mean_rows(x: np.ndarray, bounds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(sequences, width) float32 means of the row ranges ``bounds[i] .. bounds[i+1]`` of ``x``
    (a new array: ``x`` may be an arena's).  A sum per range: ``np.add.reduceat`` along rows
    takes twice as long, and each mean still depends only on its own sequence's rows."""
    out = np.empty((len(lengths), x.shape[1]), np.float32)
    for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        np.add.reduce(x[a:b], axis=0, out=out[i])
    out /= np.asarray(lengths, np.float32)[:, None]
    return out


def _softmax_rows(scores: np.ndarray) -> None:
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)


class NumpyOps:
    """numpy/numexpr/BLAS implementations on ``threads`` threads (the oracle)."""

    def __init__(self, threads: int):
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embedpipe-ops") if threads > 1 else None

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        return rms_norm(x, weight, eps)

    def gelu_tanh_mul(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        import numexpr as ne

        if ne.get_num_threads() != self.threads:
            ne.set_num_threads(self.threads)
        return gelu_tanh_mul(gate, up)

    def gelu_erf(self, x: np.ndarray) -> np.ndarray:
        from embedpipe.runtime.encoder_ops import gelu_erf

        return gelu_erf(x)

    def layer_norm(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        from embedpipe.runtime.encoder_ops import layer_norm

        return layer_norm(x, weight, bias, eps)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Around one forward pass: BLAS may use all of our threads (numpy backend matmuls)."""
        with blas_threads(self.threads):
            yield

    def attention(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        plan: Sequences,
        half_window: int | None,
        bf16: bool = False,
    ) -> np.ndarray:
        """Softmax attention of every sequence of a packed batch (see ``codegen.attention.attention``):
        q (S, Hq, D) already scaled, k (S, Hkv, D), v (S, Hkv, Dv) -> (S, Hq·Dv) fp32.
        ``plan`` has the batch's ``starts`` and ``lengths`` and a ``cache`` dict. The oracle
        computes in fp32 whether or not ``bf16`` allows rounding."""
        from embedpipe.codegen.attention import attention_reference

        return attention_reference(q, k, v, plan.starts, plan.lengths, half_window)

    # Fused building blocks of a pre-norm transformer layer.  Here they are compositions of the
    # ops above; JitOps runs each as one native call where the weight allows it.

    def norm_matmul(
        self, w: MatmulFn, x: np.ndarray, y: np.ndarray | None, w_post: np.ndarray | None, w_pre: np.ndarray, eps: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(x', w(rms(x')·w_pre))`` with ``x' = x + rms(y)·w_post`` (``x`` itself when ``y`` is None)."""
        if y is not None:
            x = x + self.rms_norm(y, w_post, eps)
        return x, w(self.rms_norm(x, w_pre, eps))

    def gelu_matmul(self, w: MatmulFn, gate_up: np.ndarray) -> np.ndarray:
        """``w(gelu_tanh(gate)·up)`` for ``gate_up`` = [gate | up] (T, 2F)."""
        f = gate_up.shape[1] // 2
        return w(self.gelu_tanh_mul(np.ascontiguousarray(gate_up[:, :f]), np.ascontiguousarray(gate_up[:, f:])))

    def qk_norm_rope(
        self, qkv: np.ndarray, qw: np.ndarray, kw: np.ndarray, cos: np.ndarray, sin: np.ndarray, heads: HeadShape
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q (S, Hq, D), k (S, Hkv, D), v (S, Hkv, Dv) from a packed Q|K|V product: per-head RMS norm
        (``qw``/``kw``), then NeoX RoPE from per-row ``cos``/``sin`` (S, D/2)."""
        s, (n_q, n_kv, d, dv, eps) = qkv.shape[0], heads
        nq, nk = n_q * d, n_kv * d
        q = self.rms_norm(np.ascontiguousarray(qkv[:, :nq]).reshape(s, n_q, d), qw, eps)
        k = self.rms_norm(np.ascontiguousarray(qkv[:, nq : nq + nk]).reshape(s, n_kv, d), kw, eps)
        v = np.ascontiguousarray(qkv[:, nq + nk :]).reshape(s, n_kv, dv)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def add_norm(self, x: np.ndarray, y: np.ndarray, w_post: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        """``rms(x + rms(y)·w_post)·w``."""
        return self.rms_norm(x + self.rms_norm(y, w_post, eps), w, eps)

    def fused_weight(self, w: object) -> bool:
        """Whether products with ``w`` run as fused native kernels (never here)."""
        return False

    def map(self, fn: Callable[[np.ndarray], None], items: list[np.ndarray]) -> None:
        """Run ``fn`` over items on the pool with BLAS single-threaded (numpy drops the GIL)."""
        if self._pool is None or len(items) < 2:
            for item in items:
                fn(item)
            return
        with blas_threads(1):
            for fut in [self._pool.submit(fn, item) for item in items]:
                fut.result()


class JitOps(NumpyOps):
    """The codegen library's fp32 kernels (natively threaded); BLAS stays single-threaded."""

    def __init__(self, library):
        super().__init__(library.threads)
        self.lib = library
        # RMS norm is memory-bound and short: a fork costs more than it saves (on a loaded
        # machine, a whole scheduler slice), so it runs on the calling thread.
        from embedpipe.codegen import get_kernel_library

        self._serial = get_kernel_library(library.isa.name, threads=1)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        return self._serial.rms_norm(np.ascontiguousarray(x), weight, eps)

    def gelu_tanh_mul(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return self.lib.gelu_tanh_mul(gate, up)

    def gelu_erf(self, x: np.ndarray) -> np.ndarray:
        return self.lib.gelu_erf(np.ascontiguousarray(x))

    def layer_norm(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        return self.lib.layer_norm(np.ascontiguousarray(x), weight, bias, eps)

    @contextmanager
    def session(self) -> Iterator[None]:
        with blas_threads(1):
            yield

    # The methods below take optional output buffers (``out``, ``x_out``): a step program
    # (``codegen.program``) records them over preallocated activations.  Only int-family
    # weights run fused (and honour them); a model records a program only when all are.

    def attention(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        plan: Sequences,
        half_window: int | None,
        out: np.ndarray | None = None,
        bf16: bool = False,
    ) -> np.ndarray:
        """All sequences of the batch in one native call of the attention kernel that
        ``codegen.attention.select_native`` picks (``bf16``: the tile kernel may run)."""
        from embedpipe.codegen.attention import attention

        return attention(
            q,
            k,
            v,
            plan.starts,
            plan.lengths,
            half_window,
            threads=self.threads,
            isa=self.lib.isa,
            cache=plan.cache,
            out=out,
            bf16=bf16,
        )

    def record_attention(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        half_window: int | None,
        out: np.ndarray,
        bf16: bool = False,
    ) -> np.ndarray:
        """Inside a step-program recording: ``attention`` over sequences each replay gives as
        its argument, a plan (``attention.record_per_run``); a hole that calls ``attention``
        when the kernel is not available here."""
        from embedpipe.codegen.attention import record_per_run, select_native
        from embedpipe.codegen.recorder import active_recorder

        native = select_native(self.lib.isa, bf16)
        if native is None:
            active_recorder().hole(lambda plan: self.attention(q, k, v, plan, half_window, out=out, bf16=bf16))
            return out
        return record_per_run(native, q, k, v, half_window, self.threads, out)

    def gather_tables(self, *specs: tuple) -> tuple | None:
        """Each ``(data, qtype, rows, d)`` as a table whose rows a recorded pass gathers
        natively (``codegen.gather.GatherTable``); None when any format has no row body or the
        kernel is not available here (the pass then looks its rows up in numpy before each
        replay)."""
        from embedpipe.codegen.gather import FORMAT_CODES, GATHER, GatherTable

        if any(spec[1] not in FORMAT_CODES for spec in specs) or GATHER.native(self.lib.isa) is None:
            return None
        return tuple(GatherTable(*spec) for spec in specs)

    def record_gather(
        self, table: GatherTable, pick: Callable[[object], np.ndarray], out: np.ndarray, scale: float = 1.0
    ) -> np.ndarray:
        """Inside a step-program recording: ``out`` gets the rows ``pick(arg)`` of ``table``
        (one of ``gather_tables``) at every replay, ``arg`` being the replay's argument."""
        from embedpipe.codegen.gather import GATHER, record_per_run

        return record_per_run(GATHER.native(self.lib.isa), table, pick, scale, self.threads, out)

    def norm_matmul(
        self,
        w: MatmulFn,
        x: np.ndarray,
        y: np.ndarray | None,
        w_post: np.ndarray | None,
        w_pre: np.ndarray,
        eps: float,
        x_out: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if not _int_weight(w):
            return super().norm_matmul(w, x, y, w_post, w_pre, eps)
        from embedpipe.codegen import fused

        return fused.norm_matmul(w, x, y, w_post, w_pre, eps, x_out=x_out, out=out)

    def gelu_matmul(self, w: MatmulFn, gate_up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not _int_weight(w):
            return super().gelu_matmul(w, gate_up)
        from embedpipe.codegen import fused

        return fused.gelu_matmul(w, gate_up, out=out)

    def qk_norm_rope(
        self,
        qkv: np.ndarray,
        qw: np.ndarray,
        kw: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        heads: HeadShape,
        out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from embedpipe.codegen import fused

        return fused.qk_norm_rope(self.lib, qkv, qw, kw, cos, sin, *heads, out=out)

    def add_norm(
        self,
        x: np.ndarray,
        y: np.ndarray,
        w_post: np.ndarray,
        w: np.ndarray,
        eps: float,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        from embedpipe.codegen import fused

        return fused.add_norm(self.lib, x, y, w_post, w, eps, out=out)

    def fused_weight(self, w: object) -> bool:
        """Whether products with ``w`` run as fused native kernels (and can be recorded)."""
        return _int_weight(w)

    def map(self, fn: Callable[[np.ndarray], None], items: list[np.ndarray]) -> None:
        if self._pool is None or len(items) < 2:
            for item in items:
                fn(item)
            return
        for fut in [self._pool.submit(fn, item) for item in items]:
            fut.result()


def _int_weight(w: object) -> bool:
    """Whether ``w`` is a JIT weight of the integer-dot family (the fused work kernels' input)."""
    return getattr(w, "family", None) == "int"


def _default_threads() -> int:
    from embedpipe.codegen.threads import default_threads

    return default_threads()


OPS_FOR_BACKEND: dict[str, Callable[[object], NumpyOps]] = {
    "numpy": lambda backend: NumpyOps(getattr(backend, "threads", None) or _default_threads()),
    "jit": lambda backend: JitOps(backend.library),
}


def ops_for(backend: object) -> NumpyOps:
    """The op implementations that fit ``backend`` (numpy for backends this table lacks)."""
    return OPS_FOR_BACKEND.get(getattr(backend, "name", ""), OPS_FOR_BACKEND["numpy"])(backend)
