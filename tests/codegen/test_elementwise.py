"""gelu_tanh(a)·b kernel vs a float64 numpy oracle, on every runnable ISA."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, get_kernel_library, runnable_isas

ISAS = [s.name for s in runnable_isas()]


def gelu_mul_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """0.5·x·(1 + tanh(u))·b, written as x·b / (1 + e^(−2u)): the same function without the
    cancellation of 1 + tanh(u) for negative x, which costs even float64 its accuracy."""
    x = a.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    with np.errstate(over="ignore"):
        return x * b / (1 + np.exp(-2 * u))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 33), (300, 1152), (2, 70001)])
def test_gelu_tanh_mul(isa, shape):
    rng = np.random.default_rng(sum(shape))
    a = (rng.standard_normal(shape) * 5).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    flat = a.reshape(-1)
    flat[: min(6, flat.size)] = [0.0, -0.0, 1e-20, -90.0, 90.0, 3e38][: min(6, flat.size)]
    y = get_kernel_library(isa, 2).gelu_tanh_mul(a, b)
    ref = gelu_mul_ref(a, b)
    assert y.shape == a.shape and y.dtype == np.float32
    assert np.isfinite(y).all()
    # fp32 rounding of u = c·(x + 0.044715·x³) is amplified |2u|-fold by the exponential, so
    # the bound grows with |u| (it matters only for strongly negative x, where gelu ≈ 0).
    u = np.abs(np.sqrt(2 / np.pi) * (a.astype(np.float64) + 0.044715 * a.astype(np.float64) ** 3))
    assert (np.abs(y - ref) <= (2e-6 + 3e-7 * np.minimum(u, 100)) * np.abs(ref) + 1e-30).all()


def test_gelu_tanh_mul_validates():
    lib = get_kernel_library(ISAS[0], 1)
    a = np.ones((4, 4), np.float32)
    with pytest.raises(KernelInputError, match="shapes differ"):
        lib.gelu_tanh_mul(a, np.ones((4, 5), np.float32))
    with pytest.raises(KernelInputError, match="float32"):
        lib.gelu_tanh_mul(a, np.ones((4, 4), np.float64))
    with pytest.raises(KernelInputError, match="C-contiguous"):
        lib.gelu_tanh_mul(a, np.ones((4, 8), np.float32)[:, ::2])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 768), (2, 3, 256), (700, 1152), (4, 33)])
def test_rms_norm(isa, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 1e3).astype(np.float32)
    x[0] = 0 if x.ndim == 2 else x[0]
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    y = get_kernel_library(isa, 2).rms_norm(x, w, 1e-6)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt((xd**2).mean(axis=-1, keepdims=True) + 1e-6) * w
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 2e-6 * np.abs(ref).max() + 1e-30


def test_rms_norm_validates():
    lib = get_kernel_library(ISAS[0], 1)
    x = np.ones((4, 8), np.float32)
    with pytest.raises(KernelInputError, match="does not match"):
        lib.rms_norm(x, np.ones(7, np.float32), 1e-6)
    with pytest.raises(KernelInputError, match="float32"):
        lib.rms_norm(x.astype(np.float64), np.ones(8, np.float32), 1e-6)
    with pytest.raises(KernelInputError, match="C-contiguous"):
        lib.rms_norm(np.ones((4, 16), np.float32)[:, ::2], np.ones(8, np.float32), 1e-6)


def _emit_reciprocals(b, isa) -> None:
    """out[i] = reciprocal(x[i]) over whole ``2·lanes`` vectors (the emitters' width), then one
    lane at a time (the division path)."""
    from embedpipe.codegen.ir_elementwise import reciprocal
    from embedpipe.codegen.irutil import F32, const_i64, for_range, load_at, store_at, vec

    x, out, n = b.function.args
    width = 2 * isa.lanes
    vstop = b.sub(n, b.srem(n, const_i64(width)))
    for ty, lo, hi, step in ((vec(F32, width), const_i64(0), vstop, width), (vec(F32, 1), vstop, n, 1)):
        with for_range(b, lo, hi, step, "i") as i:
            off = b.mul(i, const_i64(4))
            store_at(b, reciprocal(b, b.module, isa, load_at(b, ty, x, off, 4)), out, off, 4)
    b.ret_void()


@pytest.mark.parametrize("isa", runnable_isas(), ids=ISAS)
def test_reciprocal_estimate_is_within_two_ulp_of_division(isa):
    """Over the normal range; where 1/x is subnormal (|x| > 2^126) it may be zero instead."""
    from embedpipe.codegen import kernel
    from embedpipe.codegen.irutil import I64, PTR

    recip = kernel.Kernel("recip", [("x", PTR), ("out", PTR), ("n", I64)], _emit_reciprocals, twin=None, drive=None)
    module = kernel.KernelModule("ep_test_reciprocal", [recip])
    try:
        native = kernel._registry.load(module, isa, strict=True).natives["recip"]
        rng = np.random.default_rng(5)
        x = np.concatenate(
            [
                np.float32([1.0, 1.5, 3.0, 1e30, 1e-30, -2.0, 7.0, 1e38]),
                np.exp(rng.uniform(-80, 80, 2 * 4096 + 7)).astype(np.float32) * rng.choice([-1, 1], 2 * 4096 + 7),
            ]
        ).astype(np.float32)
        out = np.empty_like(x)
        native(x.ctypes.data, out.ctypes.data, x.size)
        want = np.float32(1) / x
        tiny = np.finfo(np.float32).tiny
        bad = (np.abs(out - want) > 2 * np.spacing(np.abs(want))) & (np.abs(want) >= tiny)
        assert not bad.any(), (x[bad][:5], out[bad][:5], want[bad][:5])
        assert (np.abs(out[np.abs(want) < tiny]) < tiny).all()  # subnormal results may flush to zero
    finally:
        kernel.forget(module)
