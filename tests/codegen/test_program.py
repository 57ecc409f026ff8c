"""Step programs (``codegen.program``): a recorded chain of fused kernels replayed in one native
call must give exactly what the eager calls give (the oracle), which in turn match the numpy
twins, at ragged token counts, on every runnable ISA, on one thread and on several."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, fused, get_kernel_library, runnable_isas
from embedpipe.codegen.attention import attention, attention_reference
from embedpipe.codegen.matrix_units import TILE_UNITS_ENV
from embedpipe.codegen.program import Program
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.recorder import Recorder, active_recorder, recording

ISAS = [s.name for s in runnable_isas()]
ROWS = [1, 2, 31, 33]
EPS = 1e-6


class _Layer:
    """A small pre-norm layer with random int8 weights: K=64, 2 query heads + 1 KV head of 32."""

    def __init__(self, lib, rng, k: int = 64, heads: tuple[int, int, int] = (2, 1, 32), ffn: int = 96):
        self.k, (self.n_q, self.n_kv, self.d) = k, heads
        self.ffn = ffn
        qkv_n = (self.n_q + 2 * self.n_kv) * self.d

        def weight(n: int, width: int):
            codes = rng.integers(-127, 128, (n, width)).astype(np.int8)
            scale = (rng.random(n) * 0.02 + 0.001).astype(np.float32)
            return lib.prepare_int8(codes, scale)

        self.w_qkv, self.wo = weight(qkv_n, k), weight(k, self.n_q * self.d)
        self.w_gate_up, self.w_down = weight(2 * ffn, k), weight(k, ffn)
        self.norms = [(rng.random(k) + 0.5).astype(np.float32) for _ in range(4)]
        self.qw, self.kw = ((rng.random(self.d) + 0.5).astype(np.float32) for _ in range(2))

    def buffers(self, t: int) -> dict:
        def rows(n: int) -> np.ndarray:
            return aligned_empty((t, n), np.float32, 64)

        return {
            "xa": rows(self.k),
            "qkv": rows((self.n_q + 2 * self.n_kv) * self.d),
            "heads": tuple(rows(h * self.d).reshape(t, h, self.d) for h in (self.n_q, self.n_kv, self.n_kv)),
            "attn": rows(self.n_q * self.d),
            "o": rows(self.k),
            "xb": rows(self.k),
            "gate_up": rows(2 * self.ffn),
            "f": rows(self.k),
            "final": rows(self.k),
        }

    def forward(self, lib, x, cos, sin, t: int, bufs: dict | None = None, attend=None) -> dict:
        """Norm → QKV → q/k norm + RoPE → windowed attention → Wo → residual + norm → gate|up →
        GELU·up → down → residual + output norm, into ``bufs`` when given; ``attend(q, k, v,
        out)`` replaces the attention of one sequence of ``t`` rows."""
        b = bufs or {}

        def out(name):
            return {"out": b[name]} if name in b else {}

        n1, n2, n3, n4 = self.norms
        x1, qkv = fused.norm_matmul(self.w_qkv, x, None, None, n1, EPS, **out("qkv"))
        heads = {"out": b["heads"]} if "heads" in b else {}
        q, k, v = fused.qk_norm_rope(
            lib, qkv, self.qw, self.kw, cos, sin, self.n_q, self.n_kv, self.d, self.d, EPS, **heads
        )
        cache: dict = {}
        if attend is None:
            attn = attention(q, k, v, [0], [t], 4, threads=lib.threads, isa=lib.isa, cache=cache, **out("attn"))
        else:
            attn = attend(q, k, v, out("attn"))
        o = self.wo(attn, **out("o"))
        x_kw = {"x_out": b["xb"]} if "xb" in b else {}
        x2, gate_up = fused.norm_matmul(self.w_gate_up, x1, o, n2, n3, EPS, **x_kw, **out("gate_up"))
        f = fused.gelu_matmul(self.w_down, gate_up, **out("f"))
        final = fused.add_norm(lib, x2, f, n4, n1, EPS, **out("final"))
        return {"q": q, "k": k, "v": v, "attn": attn, "x2": x2, "f": f, "final": final, "cache": cache}


def _inputs(rng, t: int, layer: _Layer):
    x = (rng.standard_normal((t, layer.k)) * 3).astype(np.float32)
    ang = np.arange(t, dtype=np.float32)[:, None] * (1.0 / 10000 ** (np.arange(layer.d // 2) * 2.0 / layer.d))[None]
    return x, np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("t", ROWS)
def test_program_equals_the_eager_calls(isa, threads, t):
    lib = get_kernel_library(isa, threads=threads)
    rng = np.random.default_rng(1000 * t + threads)
    layer = _Layer(lib, rng)
    x, cos, sin = _inputs(rng, t, layer)
    want = layer.forward(lib, x, cos, sin, t)
    bufs = layer.buffers(t)
    for arr in (bufs["final"], bufs["attn"], bufs["f"]):
        arr.fill(np.nan)
    program = Program.record(lambda: layer.forward(lib, x, cos, sin, t, bufs), lib.isa)
    assert program is not None and program.steps == program.ops == 7  # one per kernel call of forward()
    assert np.isnan(bufs["final"]).all() and np.isnan(bufs["attn"]).all(), "recording must run nothing"
    for _ in range(2):  # a second run re-zeroes the attention's work counter
        bufs["final"].fill(np.nan)
        program.run(threads)
        for name in ("attn", "f", "final"):
            np.testing.assert_array_equal(bufs[name], want[name], err_msg=name)
    np.testing.assert_array_equal(bufs["xb"], want["x2"])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", ROWS)
def test_panel_split_products_take_two_steps_and_equal_the_eager_calls(isa, t, monkeypatch):
    """With weight-panel splits (every product on the pool, weights of many panels) each int8
    product records its prologue and its panels as two steps of one operation; the program
    still gives exactly the eager calls' values, on two threads and on one."""
    from embedpipe.codegen import prepared

    monkeypatch.setattr(prepared, "MIN_PARALLEL_MACS", 0)
    lib = get_kernel_library(isa, threads=2)
    rng = np.random.default_rng(2000 + t)
    layer = _Layer(lib, rng, k=576, heads=(4, 2, 64), ffn=416)
    x, cos, sin = _inputs(rng, t, layer)
    want = layer.forward(lib, x, cos, sin, t)
    bufs = layer.buffers(t)
    program = Program.record(lambda: layer.forward(lib, x, cos, sin, t, bufs), lib.isa)
    assert program is not None and program.ops == 7 and program.steps == 7 + 4  # qkv, wo, gate|up, down
    for threads in (2, 1, 2):
        bufs["final"].fill(np.nan)
        program.run(threads)
        for name in ("attn", "f", "final"):
            np.testing.assert_array_equal(bufs[name], want[name], err_msg=f"{name}, {threads} threads")
    np.testing.assert_array_equal(bufs["xb"], want["x2"])


@pytest.mark.parametrize("t", ROWS)
def test_eager_calls_follow_the_numpy_twins(t, monkeypatch):
    """The oracle chain itself: each fused step against its numpy twin on the same inputs (the
    fp32 attention kernel; the bf16 tile kernel's numbers are tests/codegen/test_attention's)."""
    monkeypatch.setenv(TILE_UNITS_ENV, "off")
    lib = get_kernel_library(threads=2)
    rng = np.random.default_rng(t)
    layer = _Layer(lib, rng)
    x, cos, sin = _inputs(rng, t, layer)
    got = layer.forward(lib, x, cos, sin, t)
    q, k, v = got["q"], got["k"], got["v"]
    want_attn = attention_reference(q, k, v, np.array([0]), np.array([t]), 4)
    np.testing.assert_allclose(got["attn"], want_attn, rtol=2e-4, atol=2e-5)
    n1, _, _, n4 = layer.norms
    want_final = fused.add_norm_reference(got["x2"], got["f"], n4, n1, EPS)
    np.testing.assert_allclose(got["final"], want_final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_hole_runs_between_the_recorded_steps_with_each_replays_argument(threads):
    """The attention of a recorded layer left as a hole: every replay runs the steps before
    it, then the hole's call with that replay's sequence split, then the steps after; each
    replay equals the eager layer with the same split."""
    lib = get_kernel_library(threads=threads)
    rng = np.random.default_rng(11)
    layer = _Layer(lib, rng)
    t = 33
    x, cos, sin = _inputs(rng, t, layer)
    splits = [([0], [t]), ([0, 20], [20, 13]), ([0, 1, 2], [1, 1, 31])]

    def split_attention(split):
        def attend(q, k, v, out):
            return attention(q, k, v, *split, 4, threads=lib.threads, isa=lib.isa, **out)

        return attend

    wants = [layer.forward(lib, x, cos, sin, t, attend=split_attention(s))["final"] for s in splits]
    bufs = layer.buffers(t)
    calls: list = []

    def hole_attention(q, k, v, out):
        def run(split):
            calls.append(split)
            attention(q, k, v, *split, 4, threads=lib.threads, isa=lib.isa, **out)

        active_recorder().hole(run)
        return out["out"]

    program = Program.record(lambda: layer.forward(lib, x, cos, sin, t, bufs, attend=hole_attention), lib.isa)
    assert program is not None and program.steps == 6 and program.ops == 7 and not calls
    for split, want in zip(splits + splits[::-1], wants + wants[::-1]):
        bufs["final"].fill(np.nan)
        program.run(threads, split)
        np.testing.assert_array_equal(bufs["final"], want)
    assert calls == splits + splits[::-1]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_steps_of_few_and_of_many_items_run_every_item_once(threads):
    """Steps of at most 64 items are claimed by bit (each thread its own index first), longer
    ones by counter: either way every item runs once, whatever the thread count."""
    rng = np.random.default_rng(5)
    x, y = (rng.standard_normal((140, 1024)).astype(np.float32) for _ in range(2))
    w_post, w = (rng.random(1024).astype(np.float32) + 0.5 for _ in range(2))
    want = fused.add_norm(get_kernel_library(threads=1), x, y, w_post, w, EPS)
    outs = [np.full_like(x, np.nan) for _ in range(2)]
    libs = [get_kernel_library(threads=5), get_kernel_library(threads=70)]  # steps of 5 and of 70 items

    def forward():
        for lib, out in zip(libs, outs):
            fused.add_norm(lib, x, y, w_post, w, EPS, out=out)

    program = Program.record(forward)
    assert [len(words) for words in program._words] == [5, 70]
    for _ in range(2):
        for out in outs:
            out.fill(np.nan)
        program.run(threads)
        for out in outs:
            np.testing.assert_array_equal(out, want)


def test_program_owns_its_scratch():
    """Eager calls after recording (a larger product reallocates this thread's scratch) leave
    the program's buffers alone."""
    lib = get_kernel_library(threads=2)
    rng = np.random.default_rng(7)
    layer = _Layer(lib, rng)
    x, cos, sin = _inputs(rng, 31, layer)
    want = layer.forward(lib, x, cos, sin, 31)
    bufs = layer.buffers(31)
    program = Program.record(lambda: layer.forward(lib, x, cos, sin, 31, bufs), lib.isa)
    big, cb, sb = _inputs(rng, 600, layer)
    layer.forward(lib, big, cb, sb, 600)
    program.run(2)
    np.testing.assert_array_equal(bufs["final"], want["final"])


def test_recording_captures_forks_without_running_them():
    lib = get_kernel_library(threads=2)
    x = np.ones((4, 64), np.float32)
    w = np.ones(64, np.float32)
    out = np.full((4, 64), 5.0, np.float32)
    with recording() as rec:
        fused.add_norm(lib, x, x, w, w, EPS, out=out)
    assert len(rec.steps) == 1 and (out == 5.0).all()
    fused.add_norm(lib, x, x, w, w, EPS, out=out)
    assert not (out == 5.0).any()


def test_output_buffers_are_validated():
    lib = get_kernel_library(threads=1)
    rng = np.random.default_rng(3)
    layer = _Layer(lib, rng)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    with pytest.raises(KernelInputError, match="out"):
        layer.wo(np.zeros((5, 64), np.float32), out=np.empty((4, 64), np.float32))
    with pytest.raises(KernelInputError, match="overlap|apart"):
        fused.norm_matmul(layer.w_qkv, x, x.copy(), layer.norms[0], layer.norms[1], EPS, x_out=x)
    with pytest.raises(KernelInputError, match="out"):
        fused.add_norm(lib, x, x, layer.norms[0], layer.norms[1], EPS, out=np.empty((5, 63), np.float32))
    with pytest.raises(KernelInputError, match="out"):
        attention(
            np.zeros((5, 2, 32), np.float32),
            np.zeros((5, 1, 32), np.float32),
            np.zeros((5, 1, 32), np.float32),
            [0],
            [5],
            None,
            out=np.empty((5, 32), np.float32),
        )


def test_a_rewrite_needs_a_step_to_rewrite():
    with pytest.raises(ValueError, match="follows the step"):
        Recorder().rewritten(lambda arg, words: None)
