"""The step-program runner (codegen/program.py) on AArch64, under qemu: a recorded program of
row-dot steps, its table's task words relocated to the AArch64 trampolines, replayed by the
AArch64 ``run_steps``. Oracles: numpy for every step's output (the second step reads what
the first wrote), and the claim and done words each step leaves behind (every item ran once).

Two runner threads either take turns (the harness runs the items one after another: the first
runs the whole program, the second finds every item claimed, as ``program`` promises of a
thread that starts late) or run at once: through the module's fork-join entry point, on two
fresh pthreads or on the persistent worker pool (``codegen/ir_pool.py``, its AArch64 build:
the caller and a pool worker claiming and waiting concurrently under qemu). Steps of at most
``MASK_ITEMS`` items are claimed by bit, longer ones by counter.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np
import pytest

from embedpipe.codegen import ir_parallel
from embedpipe.codegen import program as P
from embedpipe.codegen.isa import ISAS
from embedpipe.codegen.kernel import Native
from embedpipe.codegen.recorder import recording
from embedpipe.codegen.rowdot import ROWDOT, ROWDOT_MODULE
from tests.codegen.qemu_tasks import NEON_ISAS, build_harness, requires_emulation, run_job

pytestmark = [pytest.mark.emulation, requires_emulation]

# task numbers in the harness: the runner is 0, then the row dots in ROWDOT's order
TASK = {dtype: 1 + i for i, dtype in enumerate(ROWDOT)}
F32, I8 = np.dtype(np.float32), np.dtype(np.int8)


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    built = {}

    def get(isa_name: str):
        if isa_name not in built:
            work = tmp_path_factory.mktemp(f"program_{isa_name}")
            built[isa_name] = build_harness(P.PROGRAM_MODULE, ISAS[isa_name], work, ROWDOT_MODULE)
        return built[isa_name]

    return get


def _rows(x: np.ndarray, q: np.ndarray, out: np.ndarray, bounds) -> list[tuple[int, ...]]:
    """Row-dot items over the row ranges ``bounds`` (the kernel's words: X, n, d, q, out)."""
    row = x.shape[1] * x.itemsize
    return [
        (x.ctypes.data + lo * row, hi - lo, x.shape[1], q.ctypes.data, out.ctypes.data + 4 * lo) for lo, hi in bounds
    ]


@pytest.mark.parametrize("how", ["in-turn", "at-once", "on-pool"])
@pytest.mark.parametrize("isa_name", NEON_ISAS)
def test_neon_runner_replays_a_recorded_program(harnesses, isa_name, how):
    rng = np.random.default_rng(7)
    x0, q0 = rng.standard_normal((256, 40)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    q1 = rng.standard_normal(8).astype(np.float32)
    x2 = rng.integers(-127, 128, (100, 24), dtype=np.int8)
    q2 = rng.standard_normal(24).astype(np.float32)
    out0, out1, out2 = np.zeros(256, np.float32), np.zeros(32, np.float32), np.zeros(100, np.float32)
    isa = ISAS[isa_name]
    with recording() as rec:
        rec.add(TASK[F32], _rows(x0, q0, out0, [(0, 50), (50, 51), (51, 128), (128, 200), (200, 256)]))
        # the real driver records the second step: a stand-in whose task word is the task number
        stand_in = Native(ROWDOT[F32], isa, None, None, task=TASK[F32])
        ROWDOT[F32].drive(stand_in, out0.reshape(32, 8), q1, out1)
        rec.add(TASK[I8], _rows(x2, q2, out2, [(i, i + 1) for i in range(100)]))  # > MASK_ITEMS: by counter
    program = P.Program(None, rec, None)
    counts = [len(words) for _, words, _ in rec.steps]
    assert counts == [5, 1, 100] and counts[2] > P.MASK_ITEMS >= counts[0]

    buffers = [program.table, program.counters, *(w for _, w, _ in rec.steps), x0, q0, out0, q1, out1, x2, q2, out2]

    def place(address: int) -> tuple[int, int]:
        for k, b in enumerate(buffers):
            if b.ctypes.data <= address < b.ctypes.data + b.nbytes:
                return k, address - b.ctypes.data
        raise AssertionError(f"{address:#x} points outside every buffer")

    inner, functions = [], []
    pointer_words = [i for i, (_, ty) in enumerate(ROWDOT[F32].params) if isinstance(ty, ir.PointerType)]
    for s, (task, words, _) in enumerate(rec.steps):
        functions.append((0, s * P.STEP_WORDS, task))
        inner.append((0, s * P.STEP_WORDS + 1, *place(words.ctypes.data)))
        at = 2 + s
        for i, row in enumerate(words.tolist()):
            inner += [(at, i * words.shape[1] + j, *place(row[j])) for j in pointer_words]
    program.counters.fill(0)
    n_steps = len(rec.steps)
    runner_items = np.array([(0, n_steps, 0, tid) for tid in (0, 1)], np.int64)
    relocs = [
        (t, w, place(b.ctypes.data)[0], 0) for t in (0, 1) for w, b in ((0, program.table), (2, program.counters))
    ]
    table = program.table.copy()
    task_name = ir_parallel.task_symbol(P.PROGRAM_MODULE.symbol(P.RUN_STEPS, isa))
    if how != "in-turn":  # two runner threads at once: the entry's own fork-join, or the pool's
        task_name = ir_parallel.parallel_symbol(task_name)
    if how == "on-pool":
        task_name = f"pool:{task_name}"
    # a runner that never finishes a step spins: fail in seconds, not at the default timeout
    run_job(harnesses(isa_name), task_name, buffers, runner_items, relocs, inner, functions, timeout=60)

    np.testing.assert_allclose(out0, x0 @ q0, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out1, (x0 @ q0).reshape(32, 8) @ q1, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out2, x2.astype(np.float32) @ q2, rtol=1e-5, atol=1e-4)
    counters = program.counters.reshape(-1, P.COUNTER_WORDS)
    claim, done = counters[:n_steps, 0], counters[:n_steps, P.COUNTER_WORDS // 2]
    assert done.tolist() == counts  # every item finished once, by one thread or the other
    # by bit: all bits taken; by counter: each thread stops after one add past n
    assert claim.tolist() == [(1 << 5) - 1, 1, 102]
    assert np.array_equal(program.table[:, 2:], table[:, 2:])  # strides and counts untouched
