"""Step programs: a recorded sequence of kernel forks replayed in one native call.

A forward pass over a short text is a chain of small kernels, each forked over the threads;
called one by one, each pays a Python driver, a ctypes call and a fork/join.  A
:class:`Program` is that chain recorded once (``recorder.recording``: the drivers validate and
lay out their items, nothing runs) over buffers that stay alive with it, then replayed by
``run_steps`` on every pool thread at once:

* step ``s`` is (task trampoline, items, item stride, item count); each thread first claims
  the item of its own index, then any item nobody has taken (bits of an atomic mask; an
  atomic counter past MASK_ITEMS items), and counts each finished item.  So one thread runs
  item ``k`` of consecutive steps when it can: a row split keeps its rows in that core's
  caches from one step to the next (on a 600-token EmbeddingGemma pass, claiming by counter
  alone made the program slower than the op-by-op pass);
* a thread starts step ``s + 1`` only when every item of step ``s`` is finished (it spins,
  then yields its core while it waits), so a step reads what the step before wrote.

A thread that is never scheduled cannot stall the others: whoever runs claims what is left,
so one thread alone runs the whole program.  A recorded ``hole`` (``Recorder.hole``) splits
the steps in segments: a replay runs a segment natively, then the hole's Python callable, then
the next segment (an operation whose layout changes between replays, such as attention over
another batch's sequences, stays a driver call between the recorded steps).  A step marked
``Recorder.rewritten`` instead keeps such an operation inside the native run: its items are
rewritten in place from the replay's argument, checked in Python, before the run starts.  A kernel
parameter named ``counter`` is a work-claiming word the kernel zeroes nowhere itself: each
recorded step gets its own, and all are zeroed before every run.  The fallback and oracle of a program is the eager op sequence
it was recorded from (``native()`` is None when LLVM cannot build the runner).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.ir_sys import cpu_relax
from embedpipe.codegen.irutil import I64, PTR, const_i64, for_range, intrinsic, loop, var
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.codegen.quant_formats import aligned_empty
from embedpipe.codegen.recorder import Recorder, recording
from embedpipe.codegen.scratch import REGISTRY

STEP_WORDS = 4  # (task address, items address, item stride in bytes, item count)
COUNTER_WORDS = 16  # per step: claim word and done word, each on its own 64-byte line
SPIN_ROUNDS = 64  # rounds of pause hints before a waiting thread starts yielding its core
PAUSES_PER_ROUND = 8
MAX_THREADS = 64
_TASK_TYPE = ir.FunctionType(PTR, [PTR])

PARAMS = [("steps", PTR), ("n_steps", I64), ("counters", PTR), ("tid", I64)]
MASK_ITEMS = 64  # steps of at most this many items claim them by bit; more, by counter


def _emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
    """``run_steps(steps, n_steps, counters, tid)``: every calling thread runs this same loop
    (``tid``: its index among them)."""
    m = b.module
    steps, n_steps, counters, tid = b.function.args
    sched_yield = intrinsic(m, "sched_yield", ir.IntType(32), [])
    s = var(b, I64, const_i64(0))
    with loop(b, "step") as step_loop:
        si = b.load(s)
        step_loop.break_unless(b.icmp_signed("<", si, n_steps))
        rec = b.gep(steps, [b.mul(si, const_i64(STEP_WORDS))], source_etype=I64)
        task, args, stride, n = (b.load(b.gep(rec, [const_i64(f)], source_etype=I64), typ=I64) for f in range(4))
        claim = b.gep(counters, [b.mul(si, const_i64(COUNTER_WORDS))], source_etype=I64)
        done = b.gep(claim, [const_i64(COUNTER_WORDS // 2)], source_etype=I64)
        fn = b.inttoptr(task, _TASK_TYPE.as_pointer())  # an indirect call: the callee type from the pointer

        def run_item(i: ir.Value) -> None:
            b.call(fn, [b.gep(b.inttoptr(args, PTR), [b.mul(i, stride)], source_etype=ir.IntType(8))])
            b.atomic_rmw("add", done, const_i64(1), "seq_cst")

        def take(i: ir.Value) -> None:
            bit = b.shl(const_i64(1), i)
            old = b.atomic_rmw("or", claim, bit, "seq_cst")
            with b.if_then(b.icmp_signed("==", b.and_(old, bit), const_i64(0))):
                run_item(i)

        with b.if_else(b.icmp_signed("<=", n, const_i64(MASK_ITEMS))) as (by_bit, by_counter):
            with by_bit:
                with b.if_then(b.icmp_signed("<", tid, n)):
                    take(tid)
                with for_range(b, const_i64(0), n, 1, "steal") as i:
                    taken = b.load_atomic(claim, "monotonic", 8, typ=I64)
                    with b.if_then(b.icmp_signed("==", b.and_(taken, b.shl(const_i64(1), i)), const_i64(0))):
                        take(i)
            with by_counter:
                with loop(b, "item") as items:
                    i = b.atomic_rmw("add", claim, const_i64(1), "seq_cst")
                    items.break_unless(b.icmp_signed("<", i, n))
                    run_item(i)
        rounds = var(b, I64, const_i64(0))
        with loop(b, "wait") as wait:
            finished = b.load_atomic(done, "acquire", 8, typ=I64)
            wait.break_if(b.icmp_signed(">=", finished, n))
            for _ in range(PAUSES_PER_ROUND):
                cpu_relax(m, b)
            r = b.load(rounds)
            b.store(b.add(r, const_i64(1)), rounds)
            with b.if_then(b.icmp_signed(">=", r, const_i64(SPIN_ROUNDS))):
                b.call(sched_yield, [])
        b.store(b.add(si, const_i64(1)), s)
    b.ret_void()


def _no_twin(*args, **kw):
    raise RuntimeError("a step program has no numpy twin: run the op sequence it was recorded from")


RUN_STEPS = Kernel("run_steps", PARAMS, _emit, twin=_no_twin, drive=lambda native, *a: native.run(*a))
PROGRAM_MODULE = KernelModule("ep_program", [RUN_STEPS])


class Program:
    """A recorded step program and everything its words point at (kept alive with it).

    ``record(fn)`` calls ``fn()`` inside ``recorder.recording`` and keeps what it returns (the
    buffers the steps read and write); ``run(threads)`` replays every step in one native call
    on ``threads`` pool threads.  One run at a time: callers serialize runs of one program
    (its buffers and counters are shared).  ``steps`` counts the recorded forks, ``ops`` the
    driver operations they came from (``Recorder.ops``).
    """

    def __init__(self, native: Native, recorder: Recorder, keep: object) -> None:
        self.native = native
        self.keep = keep
        self._words = [words for _, words, _ in recorder.steps]
        self.holes = list(recorder.holes)
        self.rewrites = [(self._words[s], fill) for s, fill in recorder.rewrites]
        self.ops = recorder.ops
        n = len(recorder.steps)
        self.counters = aligned_empty((max(n, 1) * COUNTER_WORDS,), np.int64)
        table = np.zeros((n, STEP_WORDS), np.int64)
        for s, (task, words, counter) in enumerate(recorder.steps):
            if counter is not None:
                # its own claim word, in the step's done line (unused words of it)
                words[:, counter] = self.counters[s * COUNTER_WORDS + COUNTER_WORDS // 2 + 1 :].ctypes.data
            table[s] = (task, words.ctypes.data, words.shape[1] * 8, words.shape[0])
        self.table = table

    @property
    def steps(self) -> int:
        return len(self.table)

    @classmethod
    def record(cls, fn: Callable[[], object], isa: IsaSpec | None = None) -> Program | None:
        """The program of the forks ``fn`` makes, or None when the runner is unavailable."""
        native = RUN_STEPS.native(isa)
        if native is None:
            return None
        with recording() as rec, _private_scratch(rec) as scratch:
            keep = fn()
        return cls(native, rec, (keep, scratch))

    def run(self, threads: int, replay_arg: object = None) -> None:
        """Run every step on ``threads`` threads (the calling one included), in one native call
        per segment; each hole is called with ``replay_arg`` between its segments, and each
        rewritten step's items are filled from ``replay_arg`` before the first."""
        kept = [fill(replay_arg, words) for words, fill in self.rewrites]  # noqa: F841 (alive for the run)
        self.counters.fill(0)
        threads = max(1, min(int(threads), MAX_THREADS))
        start = 0
        for at, fn in self.holes:
            self._run_steps(start, at, threads)
            fn(replay_arg)
            start = at
        self._run_steps(start, len(self.table), threads)

    def _run_steps(self, first: int, stop: int, threads: int) -> None:
        if stop > first:
            table = self.table.ctypes.data + first * STEP_WORDS * 8
            counters = self.counters.ctypes.data + first * COUNTER_WORDS * 8
            self.native.run([(table, stop - first, counters, tid) for tid in range(threads)])


@contextmanager
def _private_scratch(rec: Recorder) -> Iterator[list]:
    """Give the drivers fresh per-thread scratch (every ``scratch.REGISTRY`` entry) while
    recording and hand every buffer they allocate to the program (listed after each recorded
    fork, so a buffer replaced by a larger one stays alive): the program owns its scratch, and
    this thread's later eager calls do not share it."""
    saved = {id(s): s.value for s in REGISTRY}
    for s in REGISTRY:
        s.value = s.empty()
    kept: list = []

    def snapshot() -> None:
        kept.extend(dict(s.value) if isinstance(s.value, dict) else s.value for s in REGISTRY)

    rec.after_add.append(snapshot)
    try:
        yield kept
    finally:
        for s in REGISTRY:  # one registered while recording starts afresh, too
            s.value = saved[id(s)] if id(s) in saved else s.empty()
