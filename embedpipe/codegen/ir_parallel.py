"""Native fork-join: run a kernel over several ranges on POSIX threads, GIL-free.

Python thread pools pay a GIL hand-off per range (and worse, a convoy when the machine is
oversubscribed: a woken worker that holds the GIL can be descheduled).  Instead Python makes
one ctypes call to ``ep_parallel(task, args, stride, n)``, which starts ``n-1`` pthreads on
``task(args + i·stride)``, runs item 0 itself and joins.  Each task is a trampoline that
unpacks one row of 64-bit words into the kernel's arguments (pointers, i64, f32 bit patterns).
If a thread cannot be created, its item runs on the calling thread. Normally the items go to
the process's persistent workers (``ir_pool``, whose ``run`` every entry point takes as its
first argument); this fork-join is the fallback when another thread holds the pool.
"""

from __future__ import annotations

import llvmlite.ir as ir

from embedpipe.codegen import ir_pool
from embedpipe.codegen.irutil import F32, I32, I64, PTR, const_i64, for_range, intrinsic, new_function

MAX_THREADS = 64


def task_symbol(kernel: str) -> str:
    return f"{kernel}__task"


def emit_task(m: ir.Module, kernel: ir.Function) -> str:
    """``void* task(i64* words)``: call ``kernel`` with its arguments decoded from ``words``."""
    name = task_symbol(kernel.name)
    fn = ir.Function(m, ir.FunctionType(PTR, [PTR]), name=name)
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    words = fn.args[0]
    args = []
    for i, arg in enumerate(kernel.args):
        word = b.load(b.gep(words, [const_i64(i)], source_etype=I64), typ=I64, align=8)
        if isinstance(arg.type, ir.PointerType):
            args.append(b.inttoptr(word, PTR))
        elif arg.type == F32:
            args.append(b.bitcast(b.trunc(word, I32), F32))
        elif arg.type.width < 64:
            args.append(b.trunc(word, arg.type))
        else:
            args.append(word)
    b.call(kernel, args)
    b.ret(ir.Constant(PTR, None))
    return name


PARALLEL_PARAMS = [("pool", PTR), ("args", PTR), ("stride", I64), ("n", I64)]


def parallel_symbol(task: str) -> str:
    return f"{task}__parallel"


def emit_parallel(m: ir.Module, task: ir.Function) -> str:
    """``void f(pool, args, stride, n)``: run the ``n`` items of ``task``, item 0 on this thread.

    With ``pool`` non-null (the shared pool's ``run``, see ``ir_pool``) several items go to
    the persistent workers; if the pool is busy (another thread is using it), or without a
    pool, ``n-1`` fresh pthreads are forked and joined.  One function per task (a direct call
    lets LLVM inline the trampoline for item 0).
    """
    pthread_create = intrinsic(m, "pthread_create", I32, [PTR, PTR, PTR, PTR])
    pthread_join = intrinsic(m, "pthread_join", I32, [I64, PTR])
    name = parallel_symbol(task.name)
    fn, b = new_function(m, name, PARALLEL_PARAMS)
    pool, args, stride, n = fn.args
    I8 = ir.IntType(8)
    has_pool = b.icmp_unsigned("!=", b.ptrtoint(pool, I64), const_i64(0))
    with b.if_then(b.and_(has_pool, b.icmp_signed(">", n, const_i64(1)))):
        run = b.inttoptr(b.ptrtoint(pool, I64), ir_pool.RUN_TYPE.as_pointer())
        ran = b.call(run, [task, args, stride, n])
        with b.if_then(b.icmp_signed("!=", ran, ir.Constant(I32, 0))):
            b.ret_void()
    tids = b.alloca(I64, size=MAX_THREADS)
    started = b.alloca(I8, size=MAX_THREADS)

    def item(i: ir.Value) -> ir.Value:
        return b.gep(args, [b.mul(i, stride)], source_etype=I8)

    count = b.select(b.icmp_signed(">", n, const_i64(MAX_THREADS)), const_i64(MAX_THREADS), n)
    with for_range(b, const_i64(1), count, 1, "spawn") as i:
        rc = b.call(pthread_create, [b.gep(tids, [i], source_etype=I64), ir.Constant(PTR, None), task, item(i)])
        ok = b.icmp_signed("==", rc, ir.Constant(I32, 0))
        b.store(b.zext(ok, I8), b.gep(started, [i], source_etype=I8))
        with b.if_then(b.not_(ok)):
            b.call(task, [item(i)])
    b.call(task, [item(const_i64(0))])
    with for_range(b, count, n, 1, "rest") as i:  # beyond MAX_THREADS: run here
        b.call(task, [item(i)])
    with for_range(b, const_i64(1), count, 1, "join") as i:
        flag = b.load(b.gep(started, [i], source_etype=I8), typ=I8)
        with b.if_then(b.icmp_unsigned("!=", flag, ir.Constant(I8, 0))):
            tid = b.load(b.gep(tids, [i], source_etype=I64), typ=I64)
            b.call(pthread_join, [tid, ir.Constant(PTR, None)])
    b.ret_void()
    return name


def emit_entry_points(m: ir.Module, kernels: list[ir.Function]) -> dict[str, str]:
    """Give every kernel a task trampoline and a ``parallel`` entry point (over the shared
    pool); returns kernel symbol -> parallel symbol."""
    tasks = [m.get_global(emit_task(m, fn)) for fn in kernels]
    return {fn.name: emit_parallel(m, task) for fn, task in zip(kernels, tasks)}
