"""The attention kernels (codegen/ir_attention.py in fp32 on every runnable ISA,
codegen/ir_attention_amx.py on bf16 tiles where AMX-BF16 runs; both driven by
codegen/attention.py) vs float64 oracles; bit-level batch invariance; selection; validation."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, runnable_isas
from embedpipe.codegen import attention as A
from embedpipe.codegen.ir_attention import WORK_FIELDS
from embedpipe.codegen.ir_tiles import tile_target
from embedpipe.codegen.matrix_units import TILE_UNITS_ENV
from tests.codegen.helpers import assert_signature_is_the_compiled_ir_type

ISAS = runnable_isas()
IDS = [s.name for s in ISAS]
WIDE = [isa for isa in ISAS if isa.lanes == 16]
TILE_ISA = tile_target(WIDE[0]) if WIDE else None
TILES_HERE = TILE_ISA is not None
NO_TILES = "needs AMX-BF16 granted to this process and an AVX-512 ISA"


def kernel_params(fp32_isas):
    """(kernel, ISA to compile it for) pairs: the fp32 kernel on ``fp32_isas``, the tile kernel
    on the first AVX-512 ISA (skipped where the unit cannot run)."""
    params = [pytest.param(A.ATTENTION, isa, id=f"fp32-{isa.name}") for isa in fp32_isas]
    marks = [] if TILES_HERE else [pytest.mark.skip(reason=NO_TILES)]
    return [*params, pytest.param(A.ATTENTION_TILES, TILE_ISA, id="tiles", marks=marks)]


KERNELS = kernel_params(ISAS)


def run(kernel, isa, *args, **kwargs):
    return kernel.on(isa)(*args, **kwargs)


def bf16(a):
    """fp32 rounded to bf16 (nearest even), as fp32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def packed(lengths, n_q, n_kv, d, dv, seed=0):
    rng = np.random.default_rng(seed)
    s = int(sum(lengths))
    q = (rng.standard_normal((s, n_q, d)) / np.sqrt(d) * 3).astype(np.float32)
    k = rng.standard_normal((s, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((s, n_kv, dv)).astype(np.float32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return q, k, v, starts, np.asarray(lengths, np.int64)


def oracle(q, k, v, starts, lengths, hw, rounded=False):
    """float64 softmax attention of each sequence, masked keys at -inf; ``rounded``: with q, k,
    v and the softmax weights rounded to bf16 as the tile kernel multiplies them."""
    if rounded:
        q, k, v = bf16(q), bf16(k), bf16(v)
    n_q, n_kv = q.shape[1], k.shape[1]
    group = n_q // n_kv
    out = np.zeros((q.shape[0], n_q, v.shape[2]))
    for a, t in zip(starts, lengths):
        idx = np.arange(t)
        far = np.abs(idx[:, None] - idx[None, :]) > hw if hw is not None else np.zeros((t, t), bool)
        for h in range(n_q):
            s = q[a : a + t, h].astype(np.float64) @ k[a : a + t, h // group].astype(np.float64).T
            s[far] = -np.inf
            p = np.exp(s - s.max(axis=1, keepdims=True))
            if rounded:
                p = bf16(p.astype(np.float32)).astype(np.float64)
            out[a : a + t, h] = (p / p.sum(axis=1, keepdims=True)) @ v[a : a + t, h // group]
    return out.reshape(q.shape[0], -1)


# (lengths, n_q, n_kv, d, dv, half_window): ragged T, window edges around half_window and the
# tiles (KEY_TILE = 64 keys, 96 query rows: 32 positions for 3 heads, 96 for 1), GQA groups,
# ragged value widths (scalar tail).
CASES = [
    ([1, 2, 31, 33], 3, 1, 64, 64, None),
    ([1, 2, 31, 33], 3, 1, 24, 24, 2),
    ([255, 257, 258], 3, 1, 16, 16, 256),
    ([600], 4, 2, 40, 40, 63),
    ([95, 96, 97, 130], 1, 1, 8, 24, 64),
    ([63, 64, 65, 129], 2, 2, 8, 8, 65),
    ([9], 2, 1, 8, 8, 0),
    ([70], 6, 3, 20, 36, 16),
]


def assert_close(kernel, got, q, k, v, starts, lens, hw):
    """fp32: within 3e-6 of the float64 oracle (relative to its largest value). Tiles: within
    2e-3 of the oracle that rounds as they do (a weight near a bf16 rounding midpoint may round
    the other way), and within the 3e-2 that bf16 operands cost against the exact one."""
    ref = oracle(q, k, v, starts, lens, hw)
    scale = np.abs(ref).max()
    if kernel is A.ATTENTION:
        assert np.abs(got - ref).max() <= 3e-6 * scale
        return
    assert np.abs(got - oracle(q, k, v, starts, lens, hw, rounded=True)).max() <= 2e-3 * scale
    assert np.abs(got - ref).max() <= 3e-2 * scale


@pytest.mark.parametrize(("kernel", "isa"), KERNELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{'-'.join(map(str, c[0]))}_h{c[1]}/{c[2]}_hw{c[5]}")
def test_matches_float64_oracle(kernel, isa, case):
    lengths, n_q, n_kv, d, dv, hw = case
    q, k, v, starts, lens = packed(lengths, n_q, n_kv, d, dv, seed=len(lengths) * d)
    got = run(kernel, isa, q, k, v, starts, lens, hw, threads=2)
    assert got.shape == (q.shape[0], n_q * dv) and got.dtype == np.float32
    assert_close(kernel, got, q, k, v, starts, lens, hw)
    ref = oracle(q, k, v, starts, lens, hw)
    twin = A.attention_reference(q, k, v, starts, lens, hw)
    assert np.abs(twin - ref).max() <= 3e-6 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "isa"), kernel_params(ISAS[:1]))
@pytest.mark.parametrize("hw", [256, None])
def test_gemma_shapes_up_to_2048_tokens(kernel, isa, hw):
    """EmbeddingGemma's heads (3 query heads on 1 KV head, d = 256) at the longest context."""
    q, k, v, starts, lens = packed([2048, 257, 2], 3, 1, 256, 256, seed=3)
    got = run(kernel, isa, q, k, v, starts, lens, hw, threads=2)
    assert_close(kernel, got, q, k, v, starts, lens, hw)


@pytest.mark.parametrize(("kernel", "isa"), kernel_params(ISAS[:2]))
@pytest.mark.parametrize("hw", [256, None])
def test_a_sequence_gets_the_same_bits_whatever_shares_its_batch(kernel, isa, hw):
    """Alone, at batch sizes 7 and 32 (at any position), beside a 2000-token text, on 1-3 threads."""
    rng = np.random.default_rng(5)
    n_q, n_kv, d = 3, 1, 64

    def seq(t):
        return (
            (rng.standard_normal((t, n_q, d)) / 8).astype(np.float32),
            rng.standard_normal((t, n_kv, d)).astype(np.float32),
            rng.standard_normal((t, n_kv, d)).astype(np.float32),
        )

    mine = seq(300)

    def batch(others_before, others_after, threads):
        parts = [*others_before, mine, *others_after]
        q, k, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
        lens = np.array([len(p[0]) for p in parts], np.int64)
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        out = run(kernel, isa, q, k, v, starts, lens, hw, threads=threads)
        a = int(starts[len(others_before)])
        return out[a : a + 300]

    alone = batch([], [], 1)
    small = [seq(int(t)) for t in rng.integers(1, 90, 31)]
    np.testing.assert_array_equal(batch(small[:3], small[3:6], 2), alone)
    np.testing.assert_array_equal(batch(small[:17], small[17:], 3), alone)
    np.testing.assert_array_equal(batch([seq(2000)], small[:2], 2), alone)
    np.testing.assert_array_equal(batch([], [], 2), alone)


@pytest.mark.parametrize(("kernel", "isa"), kernel_params(ISAS[:1]))
def test_rows_outside_the_window_change_nothing(kernel, isa):
    """Keys farther than half_window never reach a row: rewriting them leaves it bit-identical."""
    q, k, v, starts, lens = packed([400], 3, 1, 32, 32, seed=9)
    base = run(kernel, isa, q, k, v, starts, lens, 100, threads=2)
    k2, v2 = k.copy(), v.copy()
    k2[300:], v2[300:] = 50.0, -7.0
    got = run(kernel, isa, q, k2, v2, starts, lens, 100, threads=2)
    np.testing.assert_array_equal(got[:199], base[:199])
    assert not np.array_equal(got[199:], base[199:])


def test_plan_cache_is_reused_and_keyed_by_shape():
    q, k, v, starts, lens = packed([40, 50], 3, 1, 16, 16)
    cache: dict = {}
    first = A.attention(q, k, v, starts, lens, 8, threads=2, cache=cache)
    assert len(cache) == 1
    np.testing.assert_array_equal(A.attention(q, k, v, starts, lens, 8, threads=2, cache=cache), first)
    A.attention(q, k, v, starts, lens, None, threads=2, cache=cache)
    assert len(cache) == 2
    work = next(iter(cache.values()))
    assert work.shape[1] == WORK_FIELDS and not work.flags.writeable


@pytest.mark.parametrize(("kernel", "isa"), KERNELS)
@pytest.mark.parametrize(
    ("length", "hw"), [(1, None), (2, None), (20, None), (31, 40), (32, 31), (33, None), (64, None), (65, None)]
)
def test_one_short_text_is_split_over_the_threads_bit_for_bit(kernel, isa, length, hw):
    """One sequence within a query tile (and within the window) is one work item: with two
    threads it is cut into two, and every row keeps its bits (each row walks the same keys in
    the same order); a longer or window-limited one keeps its tile."""
    q, k, v, starts, lens = packed([length], 3, 1, 32, 32, seed=length)
    native = kernel.native(isa)
    bq = A.query_tile(3, A.item_rows(native))
    split = A.split_query_tile(bq, lens, 1, hw, 2)
    want = -(-length // 2) if length <= bq and (hw is None or length <= hw + 1) else bq
    assert split == want
    one = run(kernel, isa, q, k, v, starts, lens, hw, threads=1)
    cache: dict = {}
    two = run(kernel, isa, q, k, v, starts, lens, hw, threads=2, cache=cache)
    np.testing.assert_array_equal(two, one)
    (work,) = cache.values()
    assert len(work) == -(-length // split)
    assert_close(kernel, one, q, k, v, starts, lens, hw)


def test_split_tiles_only_when_items_are_fewer_than_threads():
    lens = np.array([20, 20], np.int64)
    assert A.split_query_tile(32, lens, 1, None, 2) == 32
    assert A.split_query_tile(32, lens, 1, None, 4) == 10
    assert A.split_query_tile(32, lens[:1], 2, None, 2) == 32
    assert A.split_query_tile(32, lens[:1], 1, None, 1) == 32
    assert A.split_query_tile(32, np.array([], np.int64), 1, None, 2) == 32


def test_work_items_cover_every_query_tile_once():
    lens = np.array([1, 33, 97, 200], np.int64)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    work = A.plan_work(starts, lens, 2, 32, 16)
    tiles = sorted(map(tuple, work.tolist()))
    want = sorted((int(a), int(t), i0, h) for a, t in zip(starts, lens) for i0 in range(0, int(t), 32) for h in (0, 1))
    assert tiles == want


def test_falls_back_to_the_twin_without_llvm(monkeypatch):
    q, k, v, starts, lens = packed([5, 7], 3, 1, 8, 8)
    monkeypatch.setattr(A.ATTENTION, "native", lambda isa=None: None)
    monkeypatch.setattr(A.ATTENTION_TILES, "native", lambda isa=None: None)
    got = A.attention(q, k, v, starts, lens, 2, threads=2)
    np.testing.assert_array_equal(got, A.attention_reference(q, k, v, starts, lens, 2))


def test_validates_before_native_code():
    q = np.zeros((6, 3, 8), np.float32)
    kv = np.zeros((6, 1, 8), np.float32)
    ok = (np.array([0]), np.array([6]))
    with pytest.raises(KernelInputError, match="float32"):
        A.attention(q.astype(np.float64), kv, kv, *ok, None)
    with pytest.raises(KernelInputError, match="shapes do not fit"):
        A.attention(q, np.zeros((5, 1, 8), np.float32), kv, *ok, None)
    with pytest.raises(KernelInputError, match="cannot share"):
        A.attention(q, np.zeros((6, 2, 8), np.float32), np.zeros((6, 2, 8), np.float32), *ok, None)
    for starts, lengths in (([0], [7]), ([-1], [2]), ([2], [0]), ([0, 1], [1])):
        with pytest.raises(KernelInputError, match="sequence|differ"):
            A.attention(q, kv, kv, np.array(starts), np.array(lengths), None)


def test_ctypes_signature_is_the_compiled_ir_type():
    assert_signature_is_the_compiled_ir_type(A.ATTENTION_MODULE, ISAS[0])


@pytest.mark.skipif(not TILES_HERE, reason=NO_TILES)
def test_tile_kernel_signature_is_the_compiled_ir_type():
    assert_signature_is_the_compiled_ir_type(A.ATTENTION_TILES_MODULE, TILE_ISA)


def test_the_tile_kernel_is_chosen_where_it_can_run(monkeypatch):
    """With bf16 allowed, AVX-512 ISAs take the tile kernel where the unit may run; narrower
    ones, every ISA without bf16 and every ISA with EMBEDPIPE_TILE_UNITS=off, the fp32 kernel."""
    for isa in ISAS:
        want = A.ATTENTION_TILES if TILES_HERE and isa.lanes == 16 else A.ATTENTION
        assert A.select_native(isa, bf16=True).kernel is want
        assert A.select_native(isa).kernel is A.ATTENTION
    monkeypatch.setenv(TILE_UNITS_ENV, "off")
    assert all(A.select_native(isa, bf16=True).kernel is A.ATTENTION for isa in ISAS)


@pytest.mark.skipif(not TILES_HERE, reason=NO_TILES)
def test_tile_scratch_holds_the_longest_span():
    """A call's scratch is sized by its rows: the span of any sequence they hold fits."""
    from embedpipe.codegen import ir_attention_amx as T

    assert T.key_capacity(1) == 32 and T.key_capacity(440) == 448 and T.key_capacity(448) == 448
    small, large = T.scratch_bytes(3, 64, 256, 256, 32), T.scratch_bytes(3, 64, 256, 256, 448)
    assert small % 64 == 0 and large > small
    # a call's scratch follows its longest sequence, not the batch: 96 texts of 20 tokens
    # ask for spans of 32 keys
    q, k, v, _, _ = packed([20] * 96, 3, 1, 256, 256)
    native = A.ATTENTION_TILES.native(TILE_ISA)
    (item,) = A._items(native, q, k, v, np.empty((q.shape[0], 768), np.float32), 0, 0, 0, None, 64, 1, 20)
    assert item[-1] == 32
    # one sequence filling a batch, the window off: the item's span is the whole sequence
    q, k, v, starts, lens = packed([449], 3, 1, 256, 256, seed=4)
    got = run(A.ATTENTION_TILES, TILE_ISA, q, k, v, starts, lens, None, threads=2)
    assert_close(A.ATTENTION_TILES, got, q, k, v, starts, lens, None)


class _Plan:
    def __init__(self, starts, lengths):
        self.starts, self.lengths, self.cache = np.asarray(starts), np.asarray(lengths), {}


@pytest.mark.parametrize(("kernel", "isa"), kernel_params(ISAS[:1]))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("hw", [5, None])
def test_a_recorded_step_plans_each_replays_sequences(kernel, isa, threads, hw):
    """``record_per_run``: one recorded step whose work table every replay plans from its own
    sequences; each replay equals the eager call (bit for bit: the tile grid depends only on
    the sequence), and a replay's bounds are checked before anything runs."""
    from embedpipe.codegen.program import Program

    native = kernel.native(isa)
    if native is None:
        pytest.skip("no JIT here")
    q, k, v, _, _ = packed([70], 4, 2, 16, 8, seed=threads)
    out = np.zeros((70, 4 * 8), np.float32)
    program = Program.record(lambda: A.record_per_run(native, q, k, v, hw, threads, out))
    assert program.steps == 1 and program.ops == 1 and not program.holes
    splits = [([0], [70]), ([0, 3, 40], [3, 37, 30]), ([0, 1], [1, 1]), ([10], [2])]
    for starts, lengths in splits + splits[::-1]:
        want = run(kernel, isa, q, k, v, np.array(starts), np.array(lengths), hw, threads=threads)
        out.fill(np.nan)
        program.run(threads, _Plan(starts, lengths))
        rows = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, lengths)])
        np.testing.assert_array_equal(out[rows], want[rows])
    out.fill(7)
    for starts, lengths in [([60], [11]), ([0], [0]), ([-1], [3])]:
        with pytest.raises(KernelInputError, match="outside"):
            program.run(threads, _Plan(starts, lengths))
    assert (out == 7).all()
    with pytest.raises(KernelInputError, match="outside a recording"):
        A.record_per_run(native, q, k, v, hw, threads, out)
