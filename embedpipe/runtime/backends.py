"""Matmul backends: how the model multiplies activations by a stored weight.

The model only ever calls `backend.prepare(tensor)` and then the returned callable with fp32
activations X[T×K], getting X·Wᵀ[T×N]. Which kernels run, and on which instruction set, is
the backend's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.quant_formats import FORMATS
from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.runtime.gguf_file import GGUFModelFile, WeightTensor

log = logging.getLogger(__name__)

MatmulFn = Callable[[np.ndarray], np.ndarray]
NUMPY_FAMILY = "numpy-fp32T"


class Backend(Protocol):
    name: str

    def prepare(self, tensor: WeightTensor) -> MatmulFn: ...


def dequantize(tensor: WeightTensor) -> np.ndarray:
    """The tensor as float32 in its numpy shape (the reference for every kernel)."""
    if tensor.qtype == GGMLQuantizationType.F32:
        return tensor.raw.view(np.float32).reshape(tensor.shape)
    from gguf import quants  # the reference; not needed to run a model (see dequantize_rows)

    return np.asarray(quants.dequantize(tensor.rows(), tensor.qtype), dtype=np.float32).reshape(tensor.shape)


def read_vector(model_file: GGUFModelFile, name: str) -> np.ndarray:
    """A small tensor a model reads whole at load (norm weight, bias, position table) as a
    writable float32 array, read from the file rather than through its mapping
    (``GGUFModelFile.read_tensor``)."""
    return dequantize(model_file.read_tensor(name)).astype(np.float32, copy=True)


def dequantize_rows(tensor: WeightTensor, rows: np.ndarray) -> np.ndarray:
    """Selected rows of a 2-D tensor as float32, without touching the others (embedding lookup)."""
    picked = tensor.rows()[rows]
    if tensor.qtype == GGMLQuantizationType.F32:
        return picked.view(np.float32).reshape(len(rows), -1)
    # the weight format's own numpy dequantizer (equal bits to gguf.quants): a query's
    # embedding lookup does not import gguf
    return FORMATS[tensor.qtype].dequantize(picked, len(rows), tensor.shape[-1])


class NumpyBackend:
    """Weights dequantized once at load; numpy's BLAS does the products. The oracle."""

    name = "numpy"

    def __init__(self, threads: int | None = None, weight_cache: Any = None):
        self.threads = threads
        self.weight_cache = weight_cache  # a `weight_cache.WeightCache` to keep the fp32 copies in

    def prepare(self, tensor: WeightTensor) -> MatmulFn:
        weight_t = self._cached(tensor) if self.weight_cache is not None else None
        if weight_t is None:
            weight_t = np.ascontiguousarray(dequantize(tensor).T)
            if self.weight_cache is not None:
                from embedpipe.runtime.weight_cache_file import CachedArrays

                self.weight_cache.put(
                    f"{tensor.name}#fp32T", tensor.qtype, tensor.shape, CachedArrays(NUMPY_FAMILY, (weight_t,))
                )

        def matmul(x: np.ndarray) -> np.ndarray:
            return x @ weight_t

        return matmul

    prepare_fp32 = prepare  # already fp32 activations and weights

    def _cached(self, tensor: WeightTensor) -> np.ndarray | None:
        hit = self.weight_cache.get(f"{tensor.name}#fp32T", tensor.qtype, tensor.shape)
        if hit is None or hit.family != NUMPY_FAMILY or len(hit.arrays) != 1:
            return None
        (weight_t,) = hit.arrays
        n, k = tensor.shape[0], int(np.prod(tensor.shape[1:]))
        return weight_t if weight_t.shape == (k, n) and weight_t.dtype == np.float32 else None


def _jit_backend(threads: int | None) -> Backend:
    from embedpipe.runtime.backend_jit import JitBackend

    return JitBackend(threads=threads)


BACKENDS: dict[str, Callable[[int | None], Backend]] = {
    "numpy": NumpyBackend,
    "jit": _jit_backend,
}

# "auto" tries these in order and takes the first that can be built on this machine.
AUTO_ORDER: tuple[str, ...] = ("jit", "numpy")


def make_backend(name: str = "auto", threads: int | None = None) -> Backend:
    if threads is not None and threads < 1:  # else "auto" would fall back to numpy without a word
        raise ArgumentError("threads", f"must be >= 1, got {threads}")
    if name == "auto":
        for candidate in AUTO_ORDER:
            try:
                return BACKENDS[candidate](threads)
            except (ImportError, EmbedpipeError) as exc:
                log.debug("backend %s unavailable: %s", candidate, exc)
        raise EmbedpipeError("no matmul backend could be built")
    if name not in BACKENDS:
        raise EmbedpipeError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    return BACKENDS[name](threads)
