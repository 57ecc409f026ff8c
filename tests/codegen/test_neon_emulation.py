"""AArch64 NEON kernels (with and without dotprod): compiled by llvmlite for aarch64, linked
into a small C harness with the cross compiler, run under qemu-user, checked against numpy.

Needs ``scripts/install_emulation.sh`` (qemu-user, gcc-aarch64-linux-gnu); skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from embedpipe.codegen import FORMATS, ir_float, ir_q8, ir_quantize, jit
from embedpipe.codegen.isa import ISAS
from embedpipe.codegen.library import TILES, build_module
from tests.codegen.helpers import dequant, random_raw

pytestmark = pytest.mark.emulation

HARNESS = Path(__file__).with_name("neon_harness.c")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")
SYSROOT = Path("/usr/aarch64-linux-gnu")

requires_emulation = pytest.mark.skipif(
    not (QEMU and CROSS_CC),
    reason="AArch64 emulation unavailable: needs qemu-aarch64 and aarch64-linux-gnu-gcc "
    "(run scripts/install_emulation.sh)",
)


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in ("neon_dotprod", "neon", "generic_aarch64"):
        isa = ISAS[name]
        work = tmp_path_factory.mktemp(name)
        text, symbols = build_module(isa)
        (work / "kernels.o").write_bytes(jit.compile_object(text, isa))
        exe = work / "harness"
        subprocess.run(
            [
                CROSS_CC,
                "-O1",
                "-static",
                f"-DQUANT={symbols['quantize']}",
                f"-DQ8MM={symbols['q8mm']}",
                f"-DF32MM={symbols['f32mm']}",
                f"-DC8MM={symbols['c8f32mm']}",
                f"-DC8MV={symbols['c8f32mv']}",
                f"-DGELU={symbols['gelu_mul']}",
                f"-DRMS={symbols['rms_norm']}",
                f"-DADDNORM={symbols['q8work_addnorm']}",
                f"-DGELUW={symbols['q8work_gelu']}",
                f"-DRESNORM={symbols['q8work_residual_norm']}",
                f"-DQKNR={symbols['qk_norm_rope']}",
                f"-DMR={TILES[name][0].mr}",
                str(HARNESS),
                str(work / "kernels.o"),
                "-o",
                str(exe),
            ],
            check=True,
            capture_output=True,
        )
        out[name] = exe
    return out


def run_neon(exe: Path, isa_name: str, qtype: Q, raw: np.ndarray, x: np.ndarray, n: int, k: int) -> np.ndarray:
    isa = ISAS[isa_name]
    int_tile, float_tile = TILES[isa_name]
    fmt = FORMATS[qtype]
    work = exe.parent
    unpacked = fmt.repack(raw, n, k)
    if fmt.family == "float":
        w = ir_float.pack_weights(unpacked, isa, float_tile)
        (work / "w.bin").write_bytes(w.tobytes())
        args = ["float", w.shape[0], "-"]
    else:
        wq, wd = ir_q8.pack_weights(*unpacked, isa, int_tile)
        (work / "w.bin").write_bytes(wq.tobytes())
        (work / "d.bin").write_bytes(wd.tobytes())
        args = ["int", wq.shape[0], str(work / "d.bin")]
    (work / "x.bin").write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
    cmd = [
        QEMU,
        "-L",
        str(SYSROOT),
        str(exe),
        args[0],
        str(len(x)),
        str(n),
        str(k),
        str(args[1]),
        str(work / "w.bin"),
        args[2],
        str(work / "x.bin"),
        str(work / "y.bin"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return np.fromfile(work / "y.bin", dtype=np.float32).reshape(len(x), n)


@requires_emulation
@pytest.mark.parametrize("isa_name", ["neon_dotprod", "neon", "generic_aarch64"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q6_K, Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_neon_kernels_match_numpy(harnesses, isa_name, qtype):
    rng = np.random.default_rng(7)
    for t, n, k in [(1, 5, 256), (13, 37, 512), (6, 8, 768)]:
        raw = random_raw(qtype, n, k, rng)
        x = rng.standard_normal((t, k)).astype(np.float32)
        x[0, :32] = 0
        y = run_neon(harnesses[isa_name], isa_name, qtype, raw, x, n, k)
        ref = x.astype(np.float64) @ dequant(qtype, raw, n, k).T
        scale = np.abs(ref).max()
        if FORMATS[qtype].family == "float":
            assert np.abs(y - ref).max() <= 4e-6 * scale
            continue
        xq, xd = ir_quantize.quantize_reference(x)
        q, d = FORMATS[qtype].repack(raw, n, k)
        tight = (xq.reshape(t, -1, 32) * xd[:, :, None].astype(np.float64)).reshape(t, k) @ (
            q.reshape(n, -1, 32) * d[:, :, None].astype(np.float64)
        ).reshape(n, k).T
        assert np.abs(y - tight).max() <= 2e-6 * np.abs(tight).max()
        assert np.abs(y - ref).max() <= 2e-2 * scale


@requires_emulation
@pytest.mark.parametrize("isa_name", ["neon_dotprod", "neon", "generic_aarch64"])
@pytest.mark.parametrize("mode", ["codes", "codes1"])
def test_neon_coded_weights_equal_the_fp32_kernel(harnesses, isa_name, mode):
    """int8 codes × fp32 activations: bit-identical to the fp32 kernel on the dequantized weight."""
    rng = np.random.default_rng(11)
    isa, float_tile = ISAS[isa_name], TILES[isa_name][1]
    exe = harnesses[isa_name]
    work = exe.parent
    for t, n, k in [(1, 5, 256), (3, 37, 96), (9, 8, 768)]:
        raw = random_raw(Q.Q8_0, n, k, rng)
        x = rng.standard_normal((t, k)).astype(np.float32)
        codes, scales = ir_float.pack_codes(*FORMATS[Q.Q8_0].repack(raw, n, k), isa, float_tile)
        (work / "w.bin").write_bytes(codes.tobytes())
        (work / "d.bin").write_bytes(scales.tobytes())
        (work / "x.bin").write_bytes(x.tobytes())
        argv = [QEMU, "-L", str(SYSROOT), str(exe), mode, str(t), str(n), str(k), str(codes.shape[0])]
        argv += [str(work / "w.bin"), str(work / "d.bin"), str(work / "x.bin"), str(work / "y.bin")]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        got = np.fromfile(work / "y.bin", dtype=np.float32).reshape(t, n)
        want = run_neon(exe, isa_name, Q.F32, dequant(Q.Q8_0, raw, n, k).astype(np.float32).view(np.uint8), x, n, k)
        np.testing.assert_array_equal(got, want)


def _run_rowwise(exe: Path, mode: str, x: np.ndarray, second: np.ndarray) -> np.ndarray:
    work = exe.parent
    (work / "x.bin").write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
    (work / "w.bin").write_bytes(np.ascontiguousarray(second, np.float32).tobytes())
    t, n = x.shape
    subprocess.run(
        [
            QEMU,
            "-L",
            str(SYSROOT),
            str(exe),
            mode,
            str(t),
            str(n),
            "0",
            "0",
            str(work / "w.bin"),
            "-",
            str(work / "x.bin"),
            str(work / "y.bin"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.fromfile(work / "y.bin", dtype=np.float32).reshape(t, n)


@requires_emulation
@pytest.mark.parametrize("isa_name", ["neon_dotprod", "neon", "generic_aarch64"])
def test_neon_gelu_and_rms_norm(harnesses, isa_name):
    from tests.codegen.test_elementwise import gelu_mul_ref

    rng = np.random.default_rng(11)
    a = (rng.standard_normal((7, 37)) * 3).astype(np.float32)
    b = rng.standard_normal((7, 37)).astype(np.float32)
    y = _run_rowwise(harnesses[isa_name], "gelu", a, b)
    ref = gelu_mul_ref(a, b)
    u = np.abs(np.sqrt(2 / np.pi) * (a.astype(np.float64) + 0.044715 * a.astype(np.float64) ** 3))
    assert (np.abs(y - ref) <= (2e-6 + 3e-7 * np.minimum(u, 100)) * np.abs(ref) + 1e-30).all()
    x = (rng.standard_normal((5, 70)) * 100).astype(np.float32)
    w = rng.standard_normal(70).astype(np.float32)
    y = _run_rowwise(harnesses[isa_name], "rms", x, w)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt((xd**2).mean(axis=-1, keepdims=True) + 1e-6) * w
    assert np.abs(y - ref).max() <= 2e-6 * np.abs(ref).max()


def _run_fused(exe: Path, mode: str, t: int, n: int, k: int, panels: int, inputs: list[np.ndarray], out_len: int):
    work = exe.parent
    (work / "in.bin").write_bytes(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in inputs))
    weights = [str(work / "w.bin"), str(work / "d.bin")] if mode != "qknr" else ["-", "-"]
    cmd = [QEMU, "-L", str(SYSROOT), str(exe), mode, str(t), str(n), str(k), str(panels), *weights]
    subprocess.run([*cmd, str(work / "in.bin"), str(work / "out.bin")], check=True, capture_output=True, timeout=120)
    return np.fromfile(work / "out.bin", dtype=np.float32)[:out_len]


@requires_emulation
@pytest.mark.parametrize("isa_name", ["neon_dotprod", "neon", "generic_aarch64"])
def test_neon_fused_kernels(harnesses, isa_name):
    """Against the numpy twins; the harness also checks that a panel split's calls (prologue
    rows with empty products, then panels with empty prologues) give the whole call's bits."""
    from embedpipe.codegen import fused
    from tests.codegen.test_fused import _assert_product_close

    isa = ISAS[isa_name]
    rng = np.random.default_rng(5)
    t, n, k = 13, 40, 64
    codes = rng.integers(-127, 128, (n, k)).astype(np.int8)
    d = np.repeat((rng.random((n, 1)) * 0.02).astype(np.float32), k // 32, axis=1)
    wq, wd = ir_q8.pack_weights(codes, d, isa, TILES[isa_name][0])
    exe = harnesses[isa_name]
    (exe.parent / "w.bin").write_bytes(wq.tobytes())
    (exe.parent / "d.bin").write_bytes(wd.tobytes())
    w_f32 = codes.astype(np.float32) * d[:, :1]
    x = (rng.standard_normal((t, k)) * 100).astype(np.float32)
    y = rng.standard_normal((t, k)).astype(np.float32)
    w_post, w_pre = (rng.random(k).astype(np.float32) + 0.5 for _ in range(2))
    got = _run_fused(exe, "addnorm", t, n, k, wq.shape[0], [x, y, w_post, w_pre], t * (n + k))
    want_x = x + fused.rms_norm_reference(y, w_post, 1e-6)
    np.testing.assert_allclose(got[t * n :].reshape(t, k), want_x, rtol=1e-6, atol=1e-4)
    _assert_product_close(got[: t * n].reshape(t, n), fused.rms_norm_reference(want_x, w_pre, 1e-6), w_f32)
    gu = (rng.standard_normal((t, 2 * k)) * 3).astype(np.float32)
    got = _run_fused(exe, "geluw", t, n, k, wq.shape[0], [gu], t * n).reshape(t, n)
    _assert_product_close(got, fused.gelu_tanh_mul_reference(gu[:, :k], gu[:, k:]), w_f32)
    # the encoder's LayerNorm prologue: rows of k - 32 extended by the residual of block 0
    from embedpipe.codegen.encoder_fused import ExtendBlocks, residual_norm_reference

    dn = k - 32
    xr = (rng.standard_normal((t, dn)) * 3).astype(np.float32)
    bias, lw, beta = (rng.standard_normal(dn).astype(np.float32) for _ in range(3))
    res = rng.standard_normal((t, dn)).astype(np.float32)
    got = _run_fused(exe, "resnorm", t, n, k, wq.shape[0], [xr, bias, res, lw, beta], t * (n + dn))
    rows, ext = residual_norm_reference(xr, bias, res, lw, beta, 1e-12, ExtendBlocks(dn, [0]))
    np.testing.assert_allclose(got[t * n :].reshape(t, dn), rows, rtol=1e-5, atol=1e-5)
    _assert_product_close(got[: t * n].reshape(t, n), ext, w_f32)
    dh = 34
    qkv = (rng.standard_normal((t, 5 * dh)) * 10).astype(np.float32)
    qw, kw = (rng.random(dh).astype(np.float32) for _ in range(2))
    angles = (rng.random((t, dh // 2)) * 20).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    got = _run_fused(exe, "qknr", t, 0, dh, 0, [qkv, qw, kw, cos, sin], t * 5 * dh)
    q, kk, v = fused.qk_norm_rope_reference(qkv, qw, kw, cos, sin, 3, 1, dh, dh, 1e-6)
    want = np.concatenate([q.reshape(-1), kk.reshape(-1), v.reshape(-1)])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
