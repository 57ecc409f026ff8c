"""llvmlite code generator: matmul kernels per weight quantization × instruction set.

    lib = get_kernel_library()                  # detected ISA, all usable cores
    mm = lib.prepare_matmul(qtype, raw, n, k)   # raw: GGUF bytes of W[N×K], uint8 (N, row_bytes)
    y = mm(x)                                   # x: float32 (T, K) -> float32 (T, N) = x·Wᵀ

Also on the library (fp32, validated, threaded): ``lib.gelu_tanh_mul(a, b)``,
``lib.rms_norm(x, w, eps)``, ``lib.attention(q, k, v, half_window)``,
``lib.matmul_f32(x, w)``, and the int8 GEMM ``lib.prepare_int8(codes, row_scale)``.
Weight formats are registered classes (``quant_formats``).  Kernels know nothing about models.

Other kernels (``ir_attention``: tiled softmax attention of packed sequences; ``rowdot``,
``topk``, the index traversals) are declared once as a
``kernel.Kernel`` and take its one path: emit IR → on-disk object cache → load → ctypes from
the IR type → native worker pool → numpy twin when LLVM fails.  See ``isa`` for targets,
``threads`` for the thread count, ``jit`` for the object cache, ``bench`` for
``embedpipe bench kernels``.
"""

from embedpipe.codegen.isa import ISA_TABLE, ISAS, IsaSpec, UnsupportedIsaError, detect_isa, runnable_isas
from embedpipe.codegen.library import KernelInputError, KernelLibrary, PreparedMatmul, get_kernel_library
from embedpipe.codegen.quant_formats import FORMATS
from embedpipe.codegen.threads import default_threads

__all__ = [
    "FORMATS",
    "ISAS",
    "ISA_TABLE",
    "IsaSpec",
    "KernelInputError",
    "KernelLibrary",
    "PreparedMatmul",
    "UnsupportedIsaError",
    "default_threads",
    "detect_isa",
    "get_kernel_library",
    "runnable_isas",
]
