"""Random GGUF weight bytes and numpy oracles for the kernel tests."""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

Q = GGMLQuantizationType


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """GGUF bytes (N, row_bytes) of a random weight of ``qtype``.

    Types gguf-py can quantize are quantized from Gaussian values; for Q4_K/Q6_K (no numpy
    quantizer) the quant bytes are random and the fp16 super-block scales are set explicitly.
    """
    bs, ts = GGML_QUANT_SIZES[qtype]
    if qtype in (Q.Q4_K, Q.Q6_K):
        nblk = k // bs
        raw = rng.integers(0, 256, size=(n, nblk, ts), dtype=np.uint8)
        d = rng.uniform(0.5, 1.5, size=(n, nblk)) * scale / (64 if qtype == Q.Q4_K else 2048)
        if qtype == Q.Q4_K:
            raw[:, :, 0:2] = _f16_bytes(d)
            raw[:, :, 2:4] = _f16_bytes(d / 4)
        else:
            raw[:, :, ts - 2 : ts] = _f16_bytes(d)
        return raw.reshape(n, nblk * ts)
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    return np.asarray(gguf_quants.quantize(w, qtype)).view(np.uint8).reshape(n, -1)


def dequant(qtype: GGMLQuantizationType, raw: np.ndarray, n: int, k: int) -> np.ndarray:
    return np.asarray(gguf_quants.dequantize(raw, qtype), dtype=np.float64).reshape(n, k)


IR_TO_CTYPE = {"ptr": "c_void_p", "i64": "c_long", "i32": "c_int", "float": "c_float", "void": "NoneType"}


def assert_signature_is_the_compiled_ir_type(module, isa) -> None:
    """Each kernel's ctypes prototype (what Native calls through) equals the argument and
    return types of the function LLVM parsed from the module's IR text."""
    text, _ = module.build(isa)
    parsed = llvm.parse_assembly(text)
    for k in module.kernels:
        fn = parsed.get_function(module.symbol(k, isa))
        proto = type(k.native(isa)._call)
        assert [IR_TO_CTYPE[str(a.type)] for a in fn.arguments] == [t.__name__ for t in proto._argtypes_], k
        ret = str(fn.global_value_type).split(" ")[0]
        assert IR_TO_CTYPE[ret] == (proto._restype_ or type(None)).__name__, k
