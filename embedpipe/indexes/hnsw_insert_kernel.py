"""HNSW insertion as JIT native code: the per-node insert and the back-link merge of one batch.

Two kernels of one `codegen.kernel.KernelModule` per element type (emit → cached compile →
ctypes from the IR type → the module's native worker pool), each run as items of one GIL-free
call; both only *read* shared state that no item of the same call writes:

* ``insert`` (items = the batch's nodes): for batch node u, greedy descent from the
  entry point down to u's top layer, then on each layer l ≤ its level a ``search_layer`` with
  ``ef_construction`` over the graph as it was at the start of the batch, plus the batch nodes
  placed before u (scored exactly: they are not in the graph yet), then the paper's
  neighbour-selection heuristic picks u's M links into a private output row.
* ``link`` (items = the (target, layer) groups of back-links): merge the
  new incoming links into the target's list; when it overflows its capacity (2M on layer 0,
  M above) re-select with the same heuristic over old + new.

Workers claim items one at a time from a shared counter; each item writes only rows it owns,
so the graph after a batch does not depend on the number of threads or on their timing. Scores use the stored codes: fp32 rows, or int8 codes whose
float value is ``code·S[j]·R[row] + O[j]`` (S: per-dimension scale or ones, R: per-row scale
or ones, O: per-dimension offset or zeros); a node acting as the query is expanded once into
float weights ``w = S ⊙ x`` and a constant ``O · x``, so ``x_v · x = R[v]·Σ code_v·w + O·x``.

The helpers both kernels call (search_layer, pool push, the selection heuristic) and the
context layout are in `hnsw_build_ir`. The numpy twin (oracle and fallback) is
`embedpipe.indexes.hnsw_insert_twin`.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from embedpipe.codegen.irutil import F32, I8, I32, I64, const_i64
from embedpipe.codegen.isa import IsaSpec
from embedpipe.codegen.kernel import Kernel, KernelModule, Native
from embedpipe.indexes.hnsw_build_ir import CTX, ELEMENTS, PARAMS, BuildEmitter, Fn


class _Kernels(BuildEmitter):
    """The bodies of the two build kernels of one element type."""

    # --- kernels --------------------------------------------------------------------------
    def insert(self, b: ir.IRBuilder) -> None:
        """insert(ctx, scr, lo, hi): batch nodes claimed one at a time, while < hi."""
        f, a = Fn(b), dict(zip([n for n, _ in PARAMS], b.function.args))
        one, zero = const_i64(1), const_i64(0)
        ctx, scr = a["ctx"], a["scr"]
        nodes, level = self.ctx(b, ctx, "nodes", True), self.ctx(b, ctx, "level", True)
        fwd, fwdoff = self.ctx(b, ctx, "fwd", True), self.ctx(b, ctx, "fwdoff", True)
        entry, maxlevel = self.ctx(b, ctx, "entry"), self.ctx(b, ctx, "maxlevel")
        efc, m = self.ctx(b, ctx, "efc"), self.ctx(b, ctx, "m")
        qbuf, cbuf = self.scr(b, scr, "qbuf"), self.scr(b, scr, "cbuf")
        pid, ps, px = (self.scr(b, scr, k) for k in ("pool_id", "pool_s", "pool_x"))
        i = f.var(I64, const_i64(0))
        cur, layer, changed, j, size, t = (f.var(I64, zero) for _ in range(6))
        cur_s = f.var(F32, ir.Constant(F32, 0.0))

        def per_node(out: ir.Block, head: ir.Block) -> None:
            ii = f.get(i)
            u = self.ld(b, I64, nodes, ii)
            lu = b.sext(self.ld(b, I8, level, u), I64)
            qbuf_u, qc = self.expand(b, ctx, u, qbuf)
            f.put(cur, entry)
            has_graph = b.icmp_signed(">=", entry, zero)
            with b.if_then(has_graph):
                f.put(cur_s, self.sim(b, ctx, qbuf_u, qc, entry))
            f.put(layer, maxlevel)

            def descend(out2: ir.Block, head2: ir.Block) -> None:
                f.put(changed, one)

                def hop(out3: ir.Block, head3: ir.Block) -> None:
                    f.put(changed, zero)
                    base, width = self.row(b, ctx, f.get(cur), f.get(layer))
                    f.put(j, zero)

                    def scan(out4: ir.Block, head4: ir.Block) -> None:
                        v = b.sext(self.ld(b, I32, base, f.get(j)), I64)
                        f.put(j, b.add(f.get(j), one))
                        with b.if_then(b.icmp_signed("<", v, zero)):
                            b.branch(out4)
                        s = self.sim(b, ctx, qbuf_u, qc, v)
                        with b.if_then(b.fcmp_ordered(">", s, f.get(cur_s))):
                            f.put(cur_s, s)
                            f.put(cur, v)
                            f.put(changed, one)

                    f.loop(lambda: b.icmp_signed("<", f.get(j), width), scan)

                f.loop(lambda: b.icmp_signed("!=", f.get(changed), zero), hop)
                f.put(layer, b.sub(f.get(layer), one))

            f.loop(lambda: b.and_(has_graph, b.icmp_signed(">", f.get(layer), lu)), descend)
            f.put(layer, lu)

            def per_layer(out2: ir.Block, head2: ir.Block) -> None:
                ll = f.get(layer)
                f.put(size, zero)
                with b.if_then(b.and_(has_graph, b.icmp_signed("<=", ll, maxlevel))):
                    f.put(size, b.call(self.search, [ctx, scr, ll, f.get(cur), efc, qbuf_u, qc]))
                    f.put(cur, b.sext(self.ld(b, I32, pid, zero), I64))
                f.put(t, zero)

                def batch_peer(out3: ir.Block, head3: ir.Block) -> None:
                    tt = f.get(t)
                    f.put(t, b.add(tt, one))
                    w = self.ld(b, I64, nodes, tt)
                    with b.if_then(b.icmp_signed(">=", b.sext(self.ld(b, I8, level, w), I64), ll)):
                        b.call(self.push, [pid, ps, px, size, efc, self.sim(b, ctx, qbuf_u, qc, w), w])

                f.loop(lambda: b.icmp_signed("<", f.get(t), ii), batch_peer)
                row = b.add(self.ld(b, I64, fwdoff, ii), ll)
                dst = b.gep(fwd, [b.mul(row, m)], source_etype=I32)
                kept = f.var(I64, b.call(self.select, [ctx, pid, ps, f.get(size), m, dst, cbuf]))

                def pad(out3: ir.Block, head3: ir.Block) -> None:
                    self.st(b, I32, dst, f.get(kept), ir.Constant(I32, -1))
                    f.put(kept, b.add(f.get(kept), one))

                f.loop(lambda: b.icmp_signed("<", f.get(kept), m), pad)
                f.put(layer, b.sub(ll, one))

            f.loop(lambda: b.icmp_signed(">=", f.get(layer), zero), per_layer)

        def claim_node() -> ir.Value:
            f.put(i, self.claim(b, ctx))
            return b.icmp_signed("<", f.get(i), a["hi"])

        f.loop(claim_node, per_node)
        b.ret_void()

    def link(self, b: ir.IRBuilder) -> None:
        """link(ctx, scr, lo, hi): back-link groups claimed one at a time, while < hi."""
        f, a = Fn(b), dict(zip([n for n, _ in PARAMS], b.function.args))
        one, zero = const_i64(1), const_i64(0)
        ctx, scr = a["ctx"], a["scr"]
        gnode, glevel = self.ctx(b, ctx, "gnode", True), self.ctx(b, ctx, "glevel", True)
        gstart, incoming = self.ctx(b, ctx, "gstart", True), self.ctx(b, ctx, "incoming", True)
        qbuf, cbuf = self.scr(b, scr, "qbuf"), self.scr(b, scr, "cbuf")
        pid, ps, px = (self.scr(b, scr, k) for k in ("pool_id", "pool_s", "pool_x"))
        g = f.var(I64, const_i64(0))
        cnt, have, j, t, size, dup = (f.var(I64, zero) for _ in range(6))

        def per_group(out: ir.Block, head: ir.Block) -> None:
            gg = f.get(g)
            w = self.ld(b, I64, gnode, gg)
            base, width = self.row(b, ctx, w, self.ld(b, I64, glevel, gg))
            f.put(cnt, zero)

            def existing(out2: ir.Block, head2: ir.Block) -> None:
                v = self.ld(b, I32, base, f.get(cnt))
                with b.if_then(b.icmp_signed("<", v, ir.Constant(I32, 0))):
                    b.branch(out2)
                self.st(b, I32, pid, f.get(cnt), v)
                f.put(cnt, b.add(f.get(cnt), one))

            f.loop(lambda: b.icmp_signed("<", f.get(cnt), width), existing)
            f.put(have, f.get(cnt))
            f.put(t, self.ld(b, I64, gstart, gg))

            def add_new(out2: ir.Block, head2: ir.Block) -> None:
                v = self.ld(b, I32, incoming, f.get(t))
                f.put(t, b.add(f.get(t), one))
                f.put(dup, zero)
                f.put(j, zero)

                def scan(out3: ir.Block, head3: ir.Block) -> None:
                    with b.if_then(b.icmp_signed("==", self.ld(b, I32, pid, f.get(j)), v)):
                        f.put(dup, one)
                        b.branch(out3)
                    f.put(j, b.add(f.get(j), one))

                f.loop(lambda: b.icmp_signed("<", f.get(j), f.get(have)), scan)
                with b.if_then(b.icmp_signed("==", f.get(dup), zero)):
                    self.st(b, I32, pid, f.get(cnt), v)
                    f.put(cnt, b.add(f.get(cnt), one))

            f.loop(lambda: b.icmp_signed("<", f.get(t), self.ld(b, I64, gstart, b.add(gg, one))), add_new)
            fits = b.icmp_signed("<=", f.get(cnt), width)
            with b.if_else(fits) as (then, otherwise):
                with then:
                    f.put(j, f.get(have))

                    def copy(out2: ir.Block, head2: ir.Block) -> None:
                        self.st(b, I32, base, f.get(j), self.ld(b, I32, pid, f.get(j)))
                        f.put(j, b.add(f.get(j), one))

                    f.loop(lambda: b.icmp_signed("<", f.get(j), f.get(cnt)), copy)
                with otherwise:
                    # score old + new against w, sort them (the pool) and re-select
                    qw, qc = self.expand(b, ctx, w, qbuf)
                    f.put(j, zero)

                    def score(out2: ir.Block, head2: ir.Block) -> None:
                        jj = f.get(j)
                        f.put(j, b.add(jj, one))
                        v = b.sext(self.ld(b, I32, pid, jj), I64)
                        self.st(b, F32, cbuf, jj, self.sim(b, ctx, qw, qc, v))

                    f.loop(lambda: b.icmp_signed("<", f.get(j), f.get(cnt)), score)
                    # the scores sit in cbuf; sort (id, score) pairs into the tail of the pool
                    tail = b.gep(pid, [f.get(cnt)], source_etype=I32)
                    tail_s = b.gep(ps, [f.get(cnt)], source_etype=F32)
                    tail_x = b.gep(px, [f.get(cnt)], source_etype=I8)
                    f.put(size, zero)
                    f.put(j, zero)

                    def sort(out2: ir.Block, head2: ir.Block) -> None:
                        jj = f.get(j)
                        f.put(j, b.add(jj, one))
                        b.call(
                            self.push,
                            [
                                tail,
                                tail_s,
                                tail_x,
                                size,
                                f.get(cnt),
                                self.ld(b, F32, cbuf, jj),
                                b.sext(self.ld(b, I32, pid, jj), I64),
                            ],
                        )

                    f.loop(lambda: b.icmp_signed("<", f.get(j), f.get(cnt)), sort)
                    kept = f.var(I64, b.call(self.select, [ctx, tail, tail_s, f.get(cnt), width, base, cbuf]))

                    def pad(out2: ir.Block, head2: ir.Block) -> None:
                        self.st(b, I32, base, f.get(kept), ir.Constant(I32, -1))
                        f.put(kept, b.add(f.get(kept), one))

                    f.loop(lambda: b.icmp_signed("<", f.get(kept), width), pad)

        def claim_group() -> ir.Value:
            f.put(g, self.claim(b, ctx))
            return b.icmp_signed("<", f.get(g), a["hi"])

        f.loop(claim_group, per_group)
        b.ret_void()


def _kernel(quant: str, role: str) -> Kernel:
    def emit(b: ir.IRBuilder, isa: IsaSpec) -> None:
        getattr(_Kernels(b.module, ELEMENTS[quant], isa.lanes), role)(b)

    return Kernel(f"hnsw_{role}", PARAMS, emit)


# quant -> (insert, link): one module (and worker pool) per element type
KERNELS: dict[str, tuple[Kernel, Kernel]] = {q: (_kernel(q, "insert"), _kernel(q, "link")) for q in ELEMENTS}
MODULES = {q: KernelModule(f"ep_hnsw_build_{q}", list(k)) for q, k in KERNELS.items()}


class InsertKernels:
    """The compiled insert / link kernels of one element type; None when LLVM cannot build
    them here (the caller then runs the numpy twin)."""

    def __init__(self, insert: Native, link: Native) -> None:
        self._natives = {"insert": insert, "link": link}

    @classmethod
    def get(cls, quant: str, isa: IsaSpec | None = None) -> InsertKernels | None:
        insert, link = (k.native(isa) for k in KERNELS[quant])
        return None if insert is None or link is None else cls(insert, link)

    def run(self, role: str, ctx: np.ndarray, scratch: list[np.ndarray], count: int) -> None:
        """Run `role` over items 0..count-1 in one native call: each worker, with its own
        scratch, claims the next item from the context's counter until none is left."""
        workers = min(len(scratch), max(count, 1))
        ctx[CTX.index("next")] = 0
        self._natives[role].run([(ctx.ctypes.data, s.ctypes.data, w, count) for w, s in enumerate(scratch[:workers])])
