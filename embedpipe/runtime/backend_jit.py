"""The "jit" matmul backend: weights repacked for llvmlite-compiled kernels (embedpipe.codegen).

Weight types without a JIT kernel fall back to the numpy oracle, tensor by tensor.
"""

from __future__ import annotations

import logging

import numpy as np
from gguf import GGMLQuantizationType

from embedpipe.codegen import FORMATS, get_kernel_library
from embedpipe.errors import EmbedpipeError
from embedpipe.runtime.backends import MatmulFn, NumpyBackend, dequantize
from embedpipe.runtime.gguf_file import WeightTensor

log = logging.getLogger(__name__)


class JitBackend:
    name = "jit"

    def __init__(self, threads: int | None = None, isa: str | None = None):
        try:
            self.library = get_kernel_library(isa=isa, threads=threads)
        except (RuntimeError, OSError) as exc:  # LLVM could not build or load kernels for this host
            raise EmbedpipeError(f"JIT kernels unavailable: {exc}") from exc
        self.threads = self.library.threads
        self._fallback = NumpyBackend(threads)

    def prepare(self, tensor: WeightTensor) -> MatmulFn:
        if tensor.qtype not in FORMATS or len(tensor.shape) != 2:
            log.debug("no JIT kernel for %s (%s %s); using numpy", tensor.name, tensor.qtype.name, tensor.shape)
            return self._fallback.prepare(tensor)
        n, k = tensor.shape
        return self.library.prepare_matmul(tensor.qtype, tensor.rows(), n, k)

    def prepare_fp32(self, tensor: WeightTensor) -> MatmulFn:
        """The weight dequantized to fp32 on the fp32 FMA kernel: full-precision activations,
        and each row's arithmetic independent of the other rows (unlike BLAS, whose blocking
        follows the batch size)."""
        if len(tensor.shape) != 2:
            return self._fallback.prepare(tensor)
        n, k = tensor.shape
        w = np.ascontiguousarray(dequantize(tensor), dtype=np.float32)
        return self.library.prepare_matmul(GGMLQuantizationType.F32, w.view(np.uint8).reshape(n, 4 * k), n, k)
