"""The "jit" matmul backend: weights repacked for llvmlite-compiled kernels (embedpipe.codegen).

Weight types without a JIT kernel fall back to the numpy oracle, tensor by tensor. With a
weight cache attached (`use_weight_cache`), repacked weights come from, and go to, the on-disk
cache of `runtime.weight_cache`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embedpipe.codegen import FORMATS, get_kernel_library
from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.library import PACKED_LAYOUT_VERSION, TILES, PreparedMatmul
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
        self.weight_cache: Any = None

    @property
    def packing_identity(self) -> str:
        """What the packed bytes depend on besides the weight: layout version, ISA, tiles."""
        isa = self.library.isa
        return f"jit:layout{PACKED_LAYOUT_VERSION}:{isa.name}:{isa.arch}:{isa.lanes}:{isa.dot}:{TILES[isa.name]}"

    def use_weight_cache(self, model_file: Any) -> None:
        """Serve repacked weights of ``model_file`` from the on-disk cache (and fill it)."""
        from embedpipe.runtime import weight_cache

        if weight_cache.enabled():
            self.weight_cache = weight_cache.WeightCache(model_file, self.packing_identity)

    def commit_weight_cache(self) -> None:
        """Write what this load repacked to the cache (nothing when everything was a hit)."""
        if self.weight_cache is not None:
            self.weight_cache.commit()

    def prepare(self, tensor: WeightTensor) -> MatmulFn:
        if tensor.qtype not in FORMATS or len(tensor.shape) != 2:
            log.debug("no JIT kernel for %s (%s %s); using numpy", tensor.name, tensor.qtype.name, tensor.shape)
            return self._fallback.prepare(tensor)
        n, k = tensor.shape
        cache = self.weight_cache
        if cache is not None:
            hit = cache.get(tensor.name, tensor.qtype, tensor.shape)
            if hit is not None:
                return PreparedMatmul(self.library, tensor.qtype, n, k, hit.family, hit.arrays)
        prepared = self.library.prepare_matmul(tensor.qtype, tensor.rows(), n, k)
        if cache is not None:
            from embedpipe.runtime.weight_cache_file import CachedArrays

            cache.put(tensor.name, tensor.qtype, tensor.shape, CachedArrays(prepared.family, prepared.packed))
        return prepared

    def prepare_fp32(self, tensor: WeightTensor) -> MatmulFn:
        """The weight at full precision for fp32 activations, each row's arithmetic independent
        of the other rows (unlike BLAS, whose blocking follows the batch size): int8 codes and
        block scales when the format unpacks exactly (Q8_0, Q4_0; a quarter of fp32's bytes,
        the same products), else dequantized to fp32 panels."""
        if len(tensor.shape) != 2:
            return self._fallback.prepare(tensor)
        n, k = tensor.shape
        fmt = FORMATS.get(tensor.qtype)
        coded = fmt is not None and fmt.family == "int" and fmt.exact
        cache, key = self.weight_cache, f"{tensor.name}#{'codes' if coded else 'fp32'}"
        qtype = tensor.qtype if coded else GGMLQuantizationType.F32
        if cache is not None:
            hit = cache.get(key, tensor.qtype, tensor.shape)
            if hit is not None:
                return PreparedMatmul(self.library, qtype, n, k, hit.family, hit.arrays)
        if coded:
            prepared = self.library.prepare_codes(tensor.qtype, tensor.rows(), n, k)
        else:
            w = np.ascontiguousarray(dequantize(tensor), dtype=np.float32)
            prepared = self.library.prepare_matmul(GGMLQuantizationType.F32, w.view(np.uint8).reshape(n, 4 * k), n, k)
        if cache is not None:
            from embedpipe.runtime.weight_cache_file import CachedArrays

            cache.put(key, tensor.qtype, tensor.shape, CachedArrays(prepared.family, prepared.packed))
        return prepared
