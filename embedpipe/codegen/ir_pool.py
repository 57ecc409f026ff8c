"""Persistent worker threads for the native fork-join: one pool per process, shared by every
kernel module (compiled once, as its own small module: ``shared_pool``).

Starting and joining a pthread per kernel call costs about as much as a short product's work
(README, "Kernels"); a forward pass makes a few hundred such calls, so short texts paid
milliseconds for thread start-up alone. The pool keeps workers parked on a condition variable instead:

* ``run(task, args, stride, n)`` takes the pool (``pthread_mutex_trylock``; if another thread
  holds it, it returns 0 and the caller falls back to fresh pthreads), starts workers up to
  ``n − 1`` on first use, publishes the job, bumps a generation counter and wakes the workers.
  Items are claimed from one atomic word that holds the job's generation beside the next item
  (compare-and-swap), so any number of workers (even none, if ``pthread_create`` fails) runs
  every item exactly once; the caller runs item 0 and helps.  It returns when all ``n`` items
  have *finished*, not when every worker has looked in: a worker whose CPU the host took away
  (a busy VM host, an oversubscribed machine) no longer holds up a call it took no part in.
  Such a straggler may wake after later jobs were published: its claim sees another
  generation in the word and fails, so it never runs an item of a job it did not read.
* A worker loops: wait until the generation moves, read the job, claim and run items (each
  finished item counted; the one that finishes the job wakes a parked caller), wait again.
* Waiting spins first: a worker polls the generation, and the caller the finished count, for
  ``SPIN_ROUNDS`` rounds of ``pause`` hints before parking on the condition variable.
  One forward pass forks a hundred-odd times with tens of microseconds of Python between
  forks, and a batch runs passes with up to a millisecond of Python between them (the
  embedding gather, pooling, the next pass's layout); waking a parked thread (futex + IPI,
  worse on a VM with halted vCPUs) cost about as much as the work of a short product, so
  workers that spin through those gaps stay ready.
  A waiting worker also yields each round (it has nothing to do; a runnable neighbour, often
  our own caller, gets the core).  The caller does not: on an oversubscribed machine a
  yielding caller lost its core for whole time slices, where a parked one is woken with
  priority.
* ``reset()`` forgets the workers and re-zeroes the locks; it must run in a forked child
  (``os.register_at_fork``), where the parent's workers do not exist.

Jobs name their kernel by the address of its task trampoline (``void* task(i64* words)``,
``ir_parallel``), called indirectly, so any module's kernels run on the same workers: a
process holds at most MAX_WORKERS of them, not a set per module.  Locks are
zero-initialized globals: all-zero is ``PTHREAD_MUTEX_INITIALIZER`` /
``PTHREAD_COND_INITIALIZER`` on glibc and musl.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import llvmlite.ir as ir

from embedpipe.codegen import jit
from embedpipe.codegen.ir_sys import Libc, cpu_count, cpu_relax, now_ns
from embedpipe.codegen.irutil import I8, I32, I64, PTR, VOID, const_i64
from embedpipe.codegen.isa import IsaSpec

MAX_WORKERS = 63
# How long a waiting thread spins before parking: enough to bridge the gaps between the forks
# of a pass and between the passes of a batch (a spin of a few hundred pause rounds let the
# workers park at every attention call of a recorded pass, a driver call between native
# segments).  Bounded in time, not only in rounds: a worker's round ends in sched_yield, which
# on a machine with more spinning threads than cores hands the core to another spinner, so a
# bound in rounds alone spun for the whole time slice of each.
SPIN_NS = 2_000_000
# ... and only while the workers and their caller fit the cores this process may run on; with
# more threads than that, every spinner takes a core the others need, so they spin briefly.
SHORT_SPIN_NS = 70_000
SPIN_ROUNDS = 1 << 20  # a backstop: the clock ends a spin first
# The claim word: the low 32 bits of the job's generation above the next item to hand out
# (a job has fewer than 2**32 items: its item words alone would be 32 GiB).
CLAIM_SHIFT = 32
CLAIM_ITEM_MASK = (1 << CLAIM_SHIFT) - 1
PAUSES_PER_ROUND = 8
SYNC_BYTES = 128  # room for pthread_mutex_t (40 B on x86-64, 48 B on aarch64) / pthread_cond_t
MODULE_NAME = "embedpipe_pool"
TASK_TYPE = ir.FunctionType(PTR, [PTR])  # the task trampolines of ``ir_parallel``
RUN_TYPE = ir.FunctionType(I32, [PTR, PTR, I64, I64])  # run(task, args, stride, n)


def run_symbol(module_name: str) -> str:
    return f"{module_name}__pool_run"


def reset_symbol(module_name: str) -> str:
    return f"{module_name}__pool_reset"


@dataclass
class _State:
    lock: ir.GlobalVariable  # guards every field below
    busy: ir.GlobalVariable  # held by the caller for a whole run
    work: ir.GlobalVariable  # signalled when `gen` moves
    done: ir.GlobalVariable  # signalled when `finished` reaches the job's item count
    gen: ir.GlobalVariable
    task: ir.GlobalVariable
    args: ir.GlobalVariable
    stride: ir.GlobalVariable
    n: ir.GlobalVariable
    next: ir.GlobalVariable  # (generation << 32) | next unclaimed item (atomic, compare-and-swap)
    finished: ir.GlobalVariable  # items of the current job that have run to the end (atomic)
    workers: ir.GlobalVariable
    cpus: ir.GlobalVariable  # CPUs this process may run on (0: not counted yet)


def _globals(m: ir.Module) -> _State:
    def var(name: str, ty: ir.Type, align: int) -> ir.GlobalVariable:
        g = ir.GlobalVariable(m, ty, name=f"{m.name}__pool_{name}")
        g.linkage = "internal"
        g.initializer = ir.Constant(ty, None)
        g.align = align
        return g

    sync = ir.ArrayType(I8, SYNC_BYTES)
    return _State(
        *(var(n, sync, 64) for n in ("lock", "busy", "work", "done")),
        *(var(n, I64, 8) for n in ("gen", "task", "args", "stride", "n", "next", "finished", "workers", "cpus")),
    )


def _function(
    m: ir.Module, name: str, ret: ir.Type, args: list[ir.Type], internal: bool = True
) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(m, ir.FunctionType(ret, args), name=name)
    if internal:
        fn.linkage = "internal"
    fn.attributes.add("nounwind")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _call_task(b: ir.IRBuilder, task: ir.Value, item: ir.Value) -> None:
    """``task(item)`` through the task trampoline's address (an i64)."""
    b.call(b.inttoptr(task, TASK_TYPE.as_pointer()), [item])


def _emit_drain(m: ir.Module, st: _State, libc: Libc) -> ir.Function:
    """``void drain(task, args, stride, n, gen)``: claim items of generation ``gen``'s job
    (compare-and-swap on the claim word, which must still name ``gen``) until none are left;
    count each finished item, and wake a parked caller when the job's last one finishes."""
    fn, b = _function(m, f"{m.name}__pool_drain", VOID, [I64, PTR, I64, I64, I64])
    task, args, stride, n, gen = fn.args
    tag = b.shl(gen, const_i64(CLAIM_SHIFT))  # the generation's high bits shift out
    first = b.load_atomic(st.next, "acquire", 8, typ=I64)
    entry = b.block
    head, claim, body, end = (fn.append_basic_block(x) for x in ("head", "claim", "body", "end"))
    b.branch(head)
    b.position_at_end(head)
    word = b.phi(I64, "word")
    item = b.and_(word, const_i64(CLAIM_ITEM_MASK))
    mine = b.icmp_signed("==", b.and_(word, const_i64(~CLAIM_ITEM_MASK)), tag)
    b.cbranch(b.and_(mine, b.icmp_signed("<", item, n)), claim, end)
    b.position_at_end(claim)
    swap = b.cmpxchg(st.next, word, b.add(word, const_i64(1)), "acq_rel", "acquire")
    seen, won = b.extract_value(swap, 0), b.extract_value(swap, 1)
    lost = b.block
    b.cbranch(won, body, head)
    b.position_at_end(body)
    _call_task(b, task, b.gep(args, [b.mul(item, stride)], source_etype=I8))
    count = b.add(b.atomic_rmw("add", st.finished, const_i64(1), "acq_rel"), const_i64(1))
    with b.if_then(b.icmp_signed("==", count, n)):
        b.call(libc.lock, [st.lock])
        b.call(libc.signal, [st.done])
        b.call(libc.unlock, [st.lock])
    again = b.load_atomic(st.next, "acquire", 8, typ=I64)
    ran = b.block
    b.branch(head)
    word.add_incoming(first, entry)
    word.add_incoming(seen, lost)
    word.add_incoming(again, ran)
    b.position_at_end(end)
    b.ret_void()
    return fn


def _emit_spin(m: ir.Module, st: _State, libc: Libc, yielding: bool) -> ir.Function:
    """``i1 spin(i64* word, i64 value, i1 until_equal)``: poll ``*word`` (atomic acquire) for up
    to SPIN_NS (SHORT_SPIN_NS when the workers and the caller outnumber the CPUs; SPIN_ROUNDS
    rounds at most); true as soon as it equals ``value`` (``until_equal``) or differs from it
    (not ``until_equal``), false when the time runs out.  ``yielding``: each round ends in
    ``sched_yield`` (a thread with nothing to do lets a runnable neighbour have the core)."""
    name = f"{m.name}__pool_spin{'_yield' if yielding else ''}"
    fn, b = _function(m, name, ir.IntType(1), [PTR, I64, ir.IntType(1)])
    word, value, until_equal = fn.args
    ts = b.alloca(ir.ArrayType(I64, 2))
    fits = b.icmp_signed("<", b.load(st.workers, typ=I64), cpu_count(b, libc, st.cpus))
    budget = b.select(fits, const_i64(SPIN_NS), const_i64(SHORT_SPIN_NS))
    deadline = b.add(now_ns(b, libc, ts), budget)
    entry = b.block
    head, body, changed, gave_up = (fn.append_basic_block(x) for x in ("head", "body", "changed", "gave_up"))
    b.branch(head)
    b.position_at_end(head)
    rounds = b.phi(I64, "rounds")
    now = b.load_atomic(word, "acquire", 8, typ=I64)
    differs = b.icmp_signed("!=", now, value)
    b.cbranch(b.xor(differs, until_equal), changed, body)
    b.position_at_end(body)
    for _ in range(PAUSES_PER_ROUND):
        cpu_relax(m, b)
    if yielding:
        b.call(libc.sched_yield, [])
    nxt = b.add(rounds, const_i64(1))
    more = b.and_(b.icmp_signed("<", nxt, const_i64(SPIN_ROUNDS)), b.icmp_signed("<", now_ns(b, libc, ts), deadline))
    tail = b.block
    b.cbranch(more, head, gave_up)
    rounds.add_incoming(const_i64(0), entry)
    rounds.add_incoming(nxt, tail)
    b.position_at_end(changed)
    b.ret(ir.Constant(ir.IntType(1), 1))
    b.position_at_end(gave_up)
    b.ret(ir.Constant(ir.IntType(1), 0))
    return fn


def _emit_worker(m: ir.Module, st: _State, libc: Libc, drain: ir.Function, spin: ir.Function) -> ir.Function:
    """``void* worker(void* first_gen)``: spin, then park, until the generation moves; read
    the job and drain it, repeat."""
    fn, b = _function(m, f"{m.name}__pool_worker", PTR, [PTR])
    entry = b.block
    loop, wait, park, go = (fn.append_basic_block(x) for x in ("loop", "wait", "park", "go"))
    first = b.ptrtoint(fn.args[0], I64)
    b.call(libc.lock, [st.lock])
    b.branch(loop)
    b.position_at_end(loop)
    seen = b.phi(I64, "seen")
    gen = b.load(st.gen, typ=I64)
    b.cbranch(b.icmp_signed("==", gen, seen), wait, go)
    b.position_at_end(wait)
    b.call(libc.unlock, [st.lock])
    moved = b.call(spin, [st.gen, seen, ir.Constant(ir.IntType(1), 0)])
    b.call(libc.lock, [st.lock])
    b.cbranch(moved, loop, park)
    b.position_at_end(park)
    again = b.load(st.gen, typ=I64)
    with b.if_then(b.icmp_signed("==", again, seen)):
        b.call(libc.wait, [st.work, st.lock])
    parked = b.block
    b.branch(loop)
    b.position_at_end(go)
    job = [b.load(g, typ=I64) for g in (st.task, st.args, st.stride, st.n)]
    b.call(libc.unlock, [st.lock])
    b.call(drain, [job[0], b.inttoptr(job[1], PTR), job[2], job[3], gen])
    b.call(libc.lock, [st.lock])
    back = b.block
    b.branch(loop)
    seen.add_incoming(first, entry)
    seen.add_incoming(seen, wait)
    seen.add_incoming(seen, parked)
    seen.add_incoming(gen, back)
    return fn


def _emit_run(
    m: ir.Module, st: _State, libc: Libc, drain: ir.Function, worker: ir.Function, spin: ir.Function
) -> ir.Function:
    """``i32 run(task, args, stride, n)``: 1 when the job ran on the pool, 0 when it was busy."""
    fn, b = _function(m, run_symbol(m.name), I32, [PTR, PTR, I64, I64], internal=False)
    task_ptr, args, stride, n = fn.args
    task = b.ptrtoint(task_ptr, I64)
    with b.if_then(b.icmp_signed("!=", b.call(libc.trylock, [st.busy]), ir.Constant(I32, 0)), likely=False):
        b.ret(ir.Constant(I32, 0))
    b.call(libc.lock, [st.lock])
    gen = b.load(st.gen, typ=I64)
    want = b.sub(n, const_i64(1))
    want = b.select(b.icmp_signed(">", want, const_i64(MAX_WORKERS)), const_i64(MAX_WORKERS), want)
    tid = b.alloca(I64)
    spawn_head, spawn_body, spawn_ok, spawned = (
        fn.append_basic_block(x) for x in ("spawn.head", "spawn.body", "spawn.ok", "spawned")
    )
    b.branch(spawn_head)
    b.position_at_end(spawn_head)
    have = b.load(st.workers, typ=I64)
    b.cbranch(b.icmp_signed("<", have, want), spawn_body, spawned)
    b.position_at_end(spawn_body)
    rc = b.call(libc.create, [tid, ir.Constant(PTR, None), worker, b.inttoptr(gen, PTR)])
    b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), spawn_ok, spawned)
    b.position_at_end(spawn_ok)
    b.call(libc.detach, [b.load(tid, typ=I64)])
    b.store(b.add(have, const_i64(1)), st.workers)
    b.branch(spawn_head)
    b.position_at_end(spawned)
    for g, v in (
        (st.task, task),
        (st.args, b.ptrtoint(args, I64)),
        (st.stride, stride),
        (st.n, n),
    ):
        b.store(v, g)
    job_gen = b.add(gen, const_i64(1))
    b.store_atomic(const_i64(0), st.finished, "release", 8)
    tag = b.shl(job_gen, const_i64(CLAIM_SHIFT))
    b.store_atomic(b.or_(tag, const_i64(1)), st.next, "release", 8)  # item 0 is the caller's
    b.store_atomic(job_gen, st.gen, "release", 8)
    b.call(libc.broadcast, [st.work])
    b.call(libc.unlock, [st.lock])
    _call_task(b, task, args)
    b.atomic_rmw("add", st.finished, const_i64(1), "acq_rel")
    b.call(drain, [task, args, stride, n, job_gen])
    b.call(spin, [st.finished, n, ir.Constant(ir.IntType(1), 1)])  # spin while workers finish theirs
    b.call(libc.lock, [st.lock])
    wait_head, wait_body, finished = (fn.append_basic_block(x) for x in ("wait.head", "wait.body", "finished"))
    b.branch(wait_head)
    b.position_at_end(wait_head)
    left = b.icmp_signed("<", b.load_atomic(st.finished, "acquire", 8, typ=I64), n)
    b.cbranch(left, wait_body, finished)
    b.position_at_end(wait_body)
    b.call(libc.wait, [st.done, st.lock])
    b.branch(wait_head)
    b.position_at_end(finished)
    b.call(libc.unlock, [st.lock])
    b.call(libc.unlock, [st.busy])
    b.ret(ir.Constant(I32, 1))
    return fn


def _emit_reset(m: ir.Module, st: _State) -> None:
    """``void reset()``: after fork, in the child — no workers, unlocked zeroed locks."""
    fn, b = _function(m, reset_symbol(m.name), VOID, [], internal=False)
    sync = ir.Constant(ir.ArrayType(I8, SYNC_BYTES), None)
    for g in (st.lock, st.busy, st.work, st.done):
        b.store(sync, g)
    for g in (st.workers, st.finished, st.next, st.gen, st.cpus):
        b.store(const_i64(0), g)
    b.ret_void()


def emit_pool(m: ir.Module) -> ir.Function:
    """Emit the pool into ``m``; returns ``run``."""
    st, libc = _globals(m), Libc(m)
    drain = _emit_drain(m, st, libc)
    spin = _emit_spin(m, st, libc, yielding=False)
    worker = _emit_worker(m, st, libc, drain, _emit_spin(m, st, libc, yielding=True))
    run = _emit_run(m, st, libc, drain, worker, spin)
    _emit_reset(m, st)
    return run


def build_module(isa: IsaSpec) -> str:
    """IR text of the shared pool module for ``isa``'s target."""
    module = ir.Module(name=MODULE_NAME)
    module.triple = isa.triple
    emit_pool(module)
    return str(module)


_shared: dict[str, int] = {}
_shared_lock = threading.Lock()


def shared_pool(isa: IsaSpec) -> int:
    """Address of the process's one ``run(task, args, stride, n)``: compiled (through the
    object cache) and loaded on first use for the host architecture, its workers forgotten in
    a forked child.  Every kernel module's ``parallel`` entry points take it."""
    with _shared_lock:
        addr = _shared.get(isa.arch)
        if addr is None:
            from embedpipe.codegen.kernel import imported_sources, sources_digest  # kernel imports this module

            digest = sources_digest(imported_sources(frozenset({__file__})))
            key = jit.cache_key(f"shared-pool:{digest}:{isa.name}:{isa.arch}:{isa.triple}", isa)
            obj = jit.compile_cached(key, lambda: build_module(isa), isa)
            run, reset = run_symbol(MODULE_NAME), reset_symbol(MODULE_NAME)
            addrs = jit.host_engine().load(obj, [run, reset])
            os.register_at_fork(after_in_child=ctypes.CFUNCTYPE(None)(addrs[reset]))
            addr = _shared[isa.arch] = addrs[run]
        return addr
