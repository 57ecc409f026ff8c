"""PreparedMatmul: one weight repacked for a kernel library, and how its products are split
over the library's threads (rows or weight panels) with the calling thread's activation scratch.

All inputs are validated in Python before a native call; a kernel only ever sees buffers whose
sizes were checked against the dimensions it is given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedpipe.codegen import ir_q8
from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.ir_q8 import QK
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.scratch import thread_scratch
from embedpipe.codegen.threads import CACHE_LINE, split_range
from embedpipe.errors import EmbedpipeError

if TYPE_CHECKING:
    from embedpipe.codegen.library import KernelLibrary


class KernelInputError(EmbedpipeError):
    """A matmul operand has the wrong type, dtype, shape, layout or byte length."""


@dataclass
class PreparedMatmul:
    """A weight repacked for one kernel library; call it with X (T, K) fp32 to get X·Wᵀ."""

    lib: KernelLibrary
    qtype: GGMLQuantizationType
    n: int
    k: int
    family: str
    packed: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    @functools.cached_property
    def addresses(self) -> tuple[int, ...]:
        """Addresses of the packed arrays (they live as long as this object)."""
        return tuple(a.ctypes.data for a in self.packed)

    def _check(self, x: object) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise KernelInputError(f"matmul input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise KernelInputError(f"matmul input must be float32, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.k:
            raise KernelInputError(
                f"matmul input must have shape (T, {self.k}) for a {self.n}x{self.k} weight, got {x.shape}"
            )
        if not (x.flags.c_contiguous and x.flags.aligned):
            raise KernelInputError("matmul input must be C-contiguous and aligned (use np.ascontiguousarray)")
        return x

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """X·Wᵀ, into ``out`` (T, N) fp32 when given (C-contiguous, on a cache line)."""
        x = self._check(x)
        t = x.shape[0]
        if out is None:
            # On a cache line, so that threads writing neighbouring panels of a row never share one.
            y = aligned_empty((t, self.n), np.float32, CACHE_LINE)
        elif (
            not isinstance(out, np.ndarray)
            or out.dtype != np.float32
            or out.shape != (t, self.n)
            or not out.flags.c_contiguous
            or out.ctypes.data % CACHE_LINE
            or np.may_share_memory(out, x)
        ):
            raise KernelInputError(
                f"matmul out must be a C-contiguous float32 ({t}, {self.n}) array on a cache line, apart from the input"
            )
        else:
            y = out
        if t == 0:
            return y
        self._RUNNERS[self.family](self, x, y)
        return y

    @functools.cached_property
    def _plans(self) -> dict[tuple[int, int, int, int], tuple[str, list[tuple[int, int]]]]:
        return {}

    def _plan(self, t: int, mr: int, panels: int, panel_floats: int = 16) -> tuple[str, list[tuple[int, int]]]:
        """``_split`` memoized per shape (a forward asks the same question ~100 times)."""
        key = (t, mr, panels, panel_floats)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._split(t, mr, panels, panel_floats)
        return plan

    def _split(self, t: int, mr: int, panels: int, panel_floats: int) -> tuple[str, list[tuple[int, int]]]:
        """How to spread one product over threads: ("rows" | "panels", ranges).

        Small products run on the calling thread (a pool hand-off costs more than it saves),
        unless the weight is big enough that streaming it is the cost (a few rows times a
        large weight: each thread streams half).  Long batches split token rows (no activation row
        is quantized twice); short ones split weight panels when there are plenty
        (each thread streams a disjoint slice of W), else token rows.
        """
        nt = self.lib.threads
        tpad = -(-t // mr) * mr
        weight_bytes = sum(a.nbytes for a in self.packed)
        if nt == 1 or (t * self.n * self.k < MIN_PARALLEL_MACS and weight_bytes < MIN_PARALLEL_WEIGHT_BYTES):
            return "rows", [(0, tpad)]
        if tpad < ROW_SPLIT_MIN_ROWS * nt and (panels >= 4 * nt or tpad <= mr):
            # whole cache lines of each output row per thread (panels narrower than a line pair up)
            per_line = CACHE_LINE // math.gcd(CACHE_LINE, 4 * panel_floats)
            return "panels", split_range(0, panels, nt, per_line)
        return "rows", split_range(0, tpad, nt, mr)

    def _run_float(self, x: np.ndarray, y: np.ndarray) -> None:
        """fp32 activations: fp32 panels ("float") or int8 codes with block scales ("codes")."""
        panels = self.packed[0].shape[0]
        t = x.shape[0]
        mr = self.lib.float_tile.mr
        role = self._FLOAT_ROLES[self.family]
        if role == "c8f32mm" and t < mr:
            role, mr = "c8f32mv", 1
        how, ranges = self._plan(t, mr, panels, self.lib.isa.lanes * self.lib.float_tile.nv)
        head = (*self.addresses, x.ctypes.data, y.ctypes.data, t, self.n, self.k, self.n)
        rows_all = (0, -(-t // mr) * mr)
        self.lib.fork(
            role,
            [(*head, a, b, 0, panels) if how == "rows" else (*head, *rows_all, a, b) for a, b in ranges],
        )

    _FLOAT_ROLES = {"float": "f32mm", "codes": "c8f32mm"}

    def _run_int(self, x: np.ndarray, y: np.ndarray) -> None:
        """Quantize X and multiply (``fork_work`` of the plain ``q8work`` kernel)."""
        self.fork_work("q8work", lambda write: (x.ctypes.data,), x.shape[0], y.ctypes.data)

    def fork_work(self, role: str, prologue: Callable[[int], tuple[int, ...]], t: int, out: int) -> None:
        """Fork a work kernel ``role`` (a prologue into Q8 activations, then the int8 product,
        ``ir_q8.emit_work``/``ir_fused``) over this weight's plan for ``t`` rows into ``out``.

        ``prologue(write)`` gives the kernel's leading words; ``write`` says whether the item
        stores the rows it computes (the residual of ``q8work_addnorm``).  A row split
        prepares and multiplies its own rows in one task.  A panel split first prepares the
        activations once, rows spread over the threads, into one shared scratch (one fork of
        items with an empty product), then multiplies every row by each thread's panels
        (a second fork whose items have an empty prologue; in a step program the step
        barrier orders the two).
        """
        lib = self.lib
        mr = lib.int_tile.mr
        tpad = -(-t // mr) * mr
        panels = self.packed[0].shape[0]
        how, ranges = self._plan(t, mr, panels, lib.isa.lanes * lib.int_tile.nv)
        k = self.k
        tail = (*self.addresses, out, self.n, self.n)
        scratch = _scratch(tpad, k, lib.isa)
        if how == "rows":
            lib.fork(role, [(*prologue(1), *scratch, t, k, a, b, *tail, a, b, 0, panels) for a, b in ranges])
            return
        rows = split_range(0, tpad, len(ranges))
        lib.fork(role, [(*prologue(1), *scratch, t, k, a, b, *tail, 0, 0, 0, 0) for a, b in rows])
        lib.fork(role, [(*prologue(0), *scratch, t, k, 0, 0, *tail, 0, tpad, a, b) for a, b in ranges], same_op=True)

    _RUNNERS = {"float": _run_float, "codes": _run_float, "int": _run_int}


# Below this many multiply-adds a product runs on the calling thread (a hand-off to the pool
# costs more than the second thread saves).
MIN_PARALLEL_MACS = 8_000_000
# ... unless its weight has at least this many bytes to stream.
MIN_PARALLEL_WEIGHT_BYTES = 512 * 1024
# Batches of at least this many token rows per thread are split by rows, not weight panels.
ROW_SPLIT_MIN_ROWS = 128

_local = thread_scratch(lambda: None)  # (xq, xd, xc buffers, their addresses)


def _scratch(tpad: int, k: int, isa: IsaSpec) -> tuple[int, int, int]:
    """Addresses of quantized-activation buffers (xq, xd, xc) for ``tpad`` rows, cached per
    calling thread so steady-state calls allocate nothing."""
    need = (tpad * k * ir_q8.act_elem_bytes(isa), tpad * (k // QK) * 4)
    bufs = _local.value
    if bufs is None or bufs[0].nbytes < need[0] or bufs[1].nbytes < need[1]:
        arrays = (
            aligned_empty((max(need[0], 64),), np.uint8),
            aligned_empty((max(need[1], 64),), np.uint8),
            aligned_empty((max(need[1], 64),), np.uint8),
        )
        bufs = _local.value = (*arrays, tuple(a.ctypes.data for a in arrays))
    return bufs[3]
