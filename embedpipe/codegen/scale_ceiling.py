"""What Q8_0's per-block scales cost the integer product, measured rather than argued.

The library's matmul loop is emitted a second time for int8 operands with one scale per row
(``ir_q8.emit_matmul(block_scales=False)``, the layout of per-channel int8 kernels such as
ONNX Runtime's) and run on the same packed weight and quantized activations as the Q8_0
kernel.  Both issue the same dot instructions over the same bytes; the Q8_0 kernel also
converts and scales every 32-element block's sums (per block and accumulator one conversion,
one multiply and one FMA, on the ports the dots use), which the row-scale loop does once
per tile.  ``bench kernels`` prints the two side by side: their ratio is the price of the
format, apart from everything else about the kernel.  No model runs the row-scale kernel:
its results are right only where every block of a row has the same scale.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen import ir_q8, jit
from embedpipe.codegen.ir_q8 import QK
from embedpipe.codegen.prepared import KernelInputError, PreparedMatmul
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.threadpool import run_parallel
from embedpipe.codegen.threads import CACHE_LINE, split_range

if TYPE_CHECKING:
    from embedpipe.codegen.library import KernelLibrary

_MATMUL = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 6, *[ctypes.c_int64] * 8)


class RowScaleKernel:
    """The row-scale twin of ``lib``'s int8 matmul, compiled for ``lib``'s ISA and tile."""

    def __init__(self, lib: KernelLibrary) -> None:
        module = ir.Module(name=f"rowscale_{lib.isa.name}")
        module.triple = lib.isa.triple
        name = ir_q8.emit_matmul(module, lib.isa, lib.int_tile, block_scales=False)
        addr = jit.host_engine().load(jit.compile_object(str(module), lib.isa), [name])[name]
        self._fn = _MATMUL(addr)
        self.lib = lib

    def prepare(self, mm: PreparedMatmul, x: np.ndarray) -> RowScaleProduct:
        """``x`` (T, K) fp32 times ``mm``'s packed weight, ready to run."""
        if mm.lib is not self.lib or mm.family != "int":
            raise KernelInputError("the row-scale kernel takes an integer-family weight prepared by its own library")
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != mm.k:
            raise KernelInputError(f"row-scale input must be float32 (T, {mm.k})")
        return RowScaleProduct(self, mm, np.ascontiguousarray(x))


class RowScaleProduct:
    """One product on the row-scale kernel.  Each run quantizes the activations, every thread
    its own token rows, then multiplies them, as the Q8_0 work kernel does; the per-row VNNI
    offsets (which a per-row quantizer would write) are summed from the per-block ones once,
    here, as the activations never change."""

    def __init__(self, kernel: RowScaleKernel, mm: PreparedMatmul, x: np.ndarray) -> None:
        lib, tile = kernel.lib, kernel.lib.int_tile
        t, k = x.shape
        tpad = -(-t // tile.mr) * tile.mr
        codes = np.int8 if ir_q8.act_elem_bytes(lib.isa) == 1 else np.int16
        self.x = x
        self.xq = aligned_empty((tpad, k), codes, CACHE_LINE)
        self.xd = aligned_empty((tpad, k // QK), np.float32, CACHE_LINE)
        self.xc = aligned_empty((tpad, k // QK), np.int32, CACHE_LINE)
        lib._quantize(x.ctypes.data, self.xq.ctypes.data, self.xd.ctypes.data, self.xc.ctypes.data, t, k, 0, tpad)
        self.row_corr = np.ascontiguousarray(self.xc.sum(axis=1, dtype=np.int32))
        self.y = aligned_empty((t, mm.n), np.float32, CACHE_LINE)
        wq, wd = mm.addresses[:2]
        self._quantize = (lib._quantize, x.ctypes.data, self.xq.ctypes.data, self.xd.ctypes.data, self.xc.ctypes.data)
        self._head = (wq, wd, self.xq.ctypes.data, self.xd.ctypes.data, self.row_corr.ctypes.data, self.y.ctypes.data)
        self._dims = (t, mm.n, k, mm.n)
        self._panels = mm.packed[0].shape[0]
        self._ranges = split_range(0, tpad, lib.threads, tile.mr)
        self._fn, self._threads = kernel._fn, lib.threads
        self._weight = mm  # the packed arrays live as long as this product

    def _rows(self, a: int, b: int) -> None:
        quantize, *addresses = self._quantize
        t, _, k, _ = self._dims
        quantize(*addresses, t, k, a, b)
        self._fn(*self._head, *self._dims, a, b, 0, self._panels)

    def run(self) -> np.ndarray:
        """Y = X·Wᵀ with token rows split over the library's threads; returns ``y``."""
        run_parallel(self._rows, self._ranges, self._threads)
        return self.y
