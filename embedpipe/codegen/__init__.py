"""llvmlite code generator: matmul kernels per weight quantization × instruction set.

    lib = get_kernel_library()                  # detected ISA, all usable cores
    mm = lib.prepare_matmul(qtype, raw, n, k)   # raw: GGUF bytes of W[N×K], uint8 (N, row_bytes)
    y = mm(x)                                   # x: float32 (T, K) -> float32 (T, N) = x·Wᵀ

Also on the library (fp32, validated, threaded): ``lib.gelu_tanh_mul(a, b)``,
``lib.rms_norm(x, w, eps)``,
``lib.matmul_f32(x, w)``, and the int8 GEMM ``lib.prepare_int8(codes, row_scale)``.
Weight formats are registered classes (``quant_formats``).  Kernels know nothing about models.

Other kernels (``attention``: tiled softmax attention of packed sequences; ``rowdot``,
``topk``, the index traversals) are declared once as a
``kernel.Kernel`` and take its one path: emit IR → on-disk object cache → load → ctypes from
the IR type → native worker pool → numpy twin when LLVM fails.  See ``isa`` for targets,
``threads`` for the thread count, ``jit`` for the object cache, ``bench`` for
``embedpipe bench kernels``.

The names below are imported on first use: an index search that only needs ``topk`` or a
traversal kernel must not pay for the matmul library and the GGUF weight formats.
"""

from __future__ import annotations

from embedpipe.lazy_exports import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    "ISA_TABLE": "isa",
    "ISAS": "isa",
    "IsaSpec": "isa",
    "UnsupportedIsaError": "isa",
    "detect_isa": "isa",
    "runnable_isas": "isa",
    "KernelInputError": "library",
    "KernelLibrary": "library",
    "PreparedMatmul": "library",
    "get_kernel_library": "library",
    "FORMATS": "quant_formats",
    "default_threads": "threads",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
