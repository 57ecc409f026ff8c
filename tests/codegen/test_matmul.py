"""Every kernel × every ISA this machine can run, against gguf.quants + float64 numpy.

Error bounds (relative to max |Y_ref|):
* float types (F32/F16/BF16 widen exactly): 2e-6·sqrt(K/256) — fp32 accumulation only.
* integer types vs the tight oracle (X quantized to Q8_0 the same way, W as the kernel's int8
  repack): 2e-6 — integer dots are exact, only the fp32 block-scale accumulation rounds.
* integer types vs plain float64 X·Wᵀ: 2e-2 — the Q8_0 quantization of X (and, for Q4_K /
  Q6_K, the per-32 requantization of W) is the error llama.cpp also accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.codegen import FORMATS, get_kernel_library, runnable_isas
from embedpipe.codegen.ir_quantize import quantize_reference
from tests.codegen.helpers import dequant, random_raw

ISAS = [s.name for s in runnable_isas()]
FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]
INT_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K]
ALL_TYPES = FLOAT_TYPES + INT_TYPES


def _k_for(qtype: Q, k: int) -> int:
    block = 256 if qtype in (Q.Q4_K, Q.Q6_K) else 32
    return max(block, k // block * block)


def _tight_reference(lib, qtype, raw, x, n, k):
    """X·Wᵀ in float64 from exactly the integers and scales the kernel multiplies."""
    xq, xd = quantize_reference(x)
    q, d = FORMATS[qtype].repack(raw, n, k)
    xf = (xq.reshape(len(x), -1, 32) * xd[:, :, None].astype(np.float64)).reshape(len(x), k)
    wf = (q.reshape(n, -1, 32) * d[:, :, None].astype(np.float64)).reshape(n, k)
    return xf @ wf.T


def check(
    isa: str,
    qtype: Q,
    t: int,
    n: int,
    k: int,
    seed: int = 0,
    wscale: float = 1.0,
    xscale: float = 1.0,
    zero_blocks: bool = False,
    threads: int = 2,
) -> None:
    rng = np.random.default_rng(seed)
    lib = get_kernel_library(isa, threads)
    raw = random_raw(qtype, n, k, rng, wscale)
    x = (rng.standard_normal((t, k)) * xscale).astype(np.float32)
    if zero_blocks:
        x[:, 32:64] = 0
        x[t // 2] = 0
        if qtype in (Q.Q8_0, Q.F32, Q.F16, Q.BF16, Q.Q4_0):
            w = dequant(qtype, raw, n, k).astype(np.float32)
            w[:, : min(k, 32)] = 0
            w[n // 2] = 0
            raw = random_raw_from(qtype, w)
    y = lib.prepare_matmul(qtype, raw, n, k)(x)
    assert y.shape == (t, n) and y.dtype == np.float32
    ref = x.astype(np.float64) @ dequant(qtype, raw, n, k).T
    scale = max(np.abs(ref).max(), 1e-300)
    if FORMATS[qtype].family == "float":
        bound = 2e-6 * np.sqrt(max(k / 256, 1))
        assert np.abs(y - ref).max() <= bound * scale, (isa, qtype.name, t, n, k)
        return
    tight = _tight_reference(lib, qtype, raw, x, n, k)
    tscale = max(np.abs(tight).max(), 1e-300)
    assert np.abs(y - tight).max() <= 2e-6 * tscale, (isa, qtype.name, t, n, k)
    assert np.abs(y - ref).max() <= 2e-2 * scale, (isa, qtype.name, t, n, k)


def random_raw_from(qtype: Q, w: np.ndarray) -> np.ndarray:
    from gguf import quants

    return np.asarray(quants.quantize(w, qtype)).view(np.uint8).reshape(w.shape[0], -1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_ragged_shapes(isa, qtype):
    for i, (t, n, k) in enumerate([(1, 1, 32), (3, 7, 64), (5, 50, 96), (17, 97, 256), (67, 33, 512), (13, 130, 288)]):
        check(isa, qtype, t, n, _k_for(qtype, k), seed=i)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", INT_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("threads", [1, 2])
def test_both_product_loops_compute_the_same_bits(isa, qtype, threads):
    """Rows of a call's later row chunks (``IntTile.tc``), or of a first chunk of at least
    ``STREAMING_ROWS``, run the copy of the product loop that does not prefetch; each row must
    come out as the same bits as when it is the only row of a call (the prefetching copy), and
    right against the oracle."""
    rng = np.random.default_rng(7)
    n, k = 70, _k_for(qtype, 256)
    raw = random_raw(qtype, n, k, rng)
    mm = get_kernel_library(isa, threads).prepare_matmul(qtype, raw, n, k)
    for t in (47, 63, 65, 129, 257):
        x = rng.standard_normal((t, k)).astype(np.float32)
        y = mm(x)
        for row in (0, min(62, t - 3), t // 2, t - 2, t - 1):
            np.testing.assert_array_equal(
                y[row], mm(x[row : row + 1])[0], err_msg=f"{isa} {qtype.name} t={t} row {row}"
            )
        check(isa, qtype, t, n, k, seed=t, threads=threads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("k", [768, 1152, 3072])
def test_model_widths(isa, qtype, k):
    check(isa, qtype, 9, 70, _k_for(qtype, k), seed=k)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_zero_blocks(isa, qtype):
    check(isa, qtype, 11, 40, _k_for(qtype, 256), zero_blocks=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q6_K, Q.F16, Q.BF16], ids=lambda q: q.name)
@pytest.mark.parametrize("wscale,xscale", [(1e-3, 1e4), (1e4, 1e-8), (1.0, 1e-8), (100.0, 1e4)])
def test_extreme_scales(isa, qtype, wscale, xscale):
    check(isa, qtype, 6, 20, _k_for(qtype, 256), wscale=wscale, xscale=xscale)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.F16], ids=lambda q: q.name)
@pytest.mark.parametrize(
    "n,row_split_min",
    [(200, 128), (500, 128), (500, 1)],
    ids=["few-panels:rows", "many-panels:panels", "long-batch:rows"],
)
def test_threads_agree_bitwise(isa, qtype, n, row_split_min, monkeypatch):
    """Every work split gives exactly the single-thread result (each output element is
    computed by one thread in the same order)."""
    from embedpipe.codegen import prepared

    monkeypatch.setattr(prepared, "MIN_PARALLEL_MACS", 0)
    monkeypatch.setattr(prepared, "ROW_SPLIT_MIN_ROWS", row_split_min)
    rng = np.random.default_rng(5)
    raw = random_raw(qtype, n, 256, rng)
    x = rng.standard_normal((45, 256)).astype(np.float32)
    one = get_kernel_library(isa, 1).prepare_matmul(qtype, raw, n, 256)(x)
    for threads in (2, 3):
        mm = get_kernel_library(isa, threads).prepare_matmul(qtype, raw, n, 256)
        np.testing.assert_array_equal(mm(x), one)


def test_empty_batch():
    lib = get_kernel_library(ISAS[0], 2)
    rng = np.random.default_rng(0)
    mm = lib.prepare_matmul(Q.Q8_0, random_raw(Q.Q8_0, 8, 64, rng), 8, 64)
    assert mm(np.zeros((0, 64), np.float32)).shape == (0, 8)


def test_non_finite_activations_do_not_crash():
    lib = get_kernel_library(ISAS[0], 2)
    rng = np.random.default_rng(0)
    mm = lib.prepare_matmul(Q.Q8_0, random_raw(Q.Q8_0, 8, 64, rng), 8, 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    x[1, 5] = np.inf
    y = mm(x)
    assert np.isfinite(y[0]).all() and np.isfinite(y[2]).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda q: q.name)
def test_float_types_take_any_k(isa, qtype):
    for t, n, k in [(5, 9, 40), (2, 33, 7), (9, 17, 1)]:
        check(isa, qtype, t, n, k)


def test_libraries_cached_per_isa_and_threads():
    a = get_kernel_library(ISAS[0], 2)
    assert get_kernel_library(ISAS[0], 2) is a
    assert get_kernel_library(ISAS[0], 1) is not a
    assert a.isa.name == ISAS[0] and a.threads == 2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_kernel_requantization_is_the_reference(isa, qtype):
    """K-quants are re-quantized by the emitted kernel; it must equal the numpy twin."""
    lib = get_kernel_library(isa, 1)
    raw = random_raw(qtype, 40, 512, np.random.default_rng(9))
    q, d = lib._quantize_weights(FORMATS[qtype].dequantize(raw, 40, 512))
    q_ref, d_ref = FORMATS[qtype].repack(raw, 40, 512)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("t,n,k", [(1, 3072, 768), (1, 5, 32), (2, 77, 96), (7, 130, 64), (9, 33, 160), (33, 48, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_coded_weights_compute_the_dequantized_fp32_product_exactly(isa, qtype, t, n, k, threads):
    """int8 codes × fp32 activations (``prepare_codes``) against the fp32 kernel on the
    dequantized weight: code·scale is exact in fp32, so every bit agrees; and against
    float64 numpy within the fp32-accumulation bound."""
    rng = np.random.default_rng(t * 1000 + n)
    lib = get_kernel_library(isa, threads)
    raw = random_raw(qtype, n, k, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    coded = lib.prepare_codes(qtype, raw, n, k)
    w = dequant(qtype, raw, n, k).astype(np.float32)
    fp32 = lib.prepare_matmul(Q.F32, w.view(np.uint8).reshape(n, 4 * k), n, k)
    assert coded.family == "codes"
    assert sum(a.nbytes for a in coded.packed) <= 0.32 * sum(a.nbytes for a in fp32.packed)
    y = coded(x)
    np.testing.assert_array_equal(y, fp32(x))
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(y - ref).max() <= 2e-6 * np.sqrt(max(k / 256, 1)) * np.abs(ref).max()


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.F16], ids=lambda q: q.name)
def test_coded_weights_refuse_formats_without_exact_codes(qtype):
    from embedpipe.codegen import KernelInputError

    lib = get_kernel_library(None, 1)
    raw = random_raw(qtype, 8, 256, np.random.default_rng(1))
    with pytest.raises(KernelInputError, match="exact int8 codes"):
        lib.prepare_codes(qtype, raw, 8, 256)
