"""Where a batch's time goes: process CPU seconds per operation of a model's forward passes.

For the duration of one profile, every method of the model's op set (``model.ops``: fused
norm+matmul, attention, RoPE, …) and every prepared weight its layers hold is wrapped by a
timer; the wrappers delegate every attribute, so the ops see the same weights and take the
same paths.  Only the outermost timed call counts (a fused op that calls a weight is one
entry), and whatever no wrapper covers (Python between ops, the embedding gather, pooling,
the dense head, tokenization is not included) is reported as ``other``.  Recorded step
programs are switched off for the profile (``max_program_tokens``), so each op of a pass is
called and timed; the Python between the ops then counts in ``other``, which a program's
replay does not pay.  CPU time over all threads is the load-robust measure on a shared
machine; wall time is reported beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedpipe.runtime.embedder import Embedder

OP_METHODS: tuple[str, ...] = (
    "norm_matmul",
    "gelu_matmul",
    "qk_norm_rope",
    "attention",
    "add_norm",
    "rms_norm",
    "layer_norm",
    "gelu_tanh_mul",
    "gelu_erf",
    "residual_norm",
    "residual_norm_matmul",
    "combine",
    "bias_gelu_matmul",
)
#: The model attributes that hold op sets (EmbeddingGemma's ``ops``; an encoder's row ops too).
OP_SETS: tuple[str, ...] = ("ops", "eops")
OTHER = "other"


@dataclass
class OpTime:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    calls: int = 0


class _Timer:
    """Accumulates per-label times; nested timed calls on the same thread are not counted twice."""

    def __init__(self) -> None:
        self.times: dict[str, OpTime] = {}
        self._local = threading.local()

    def timed(self, label: Callable[..., str], fn: Callable) -> Callable:
        def run(*args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            if depth:
                return fn(*args, **kwargs)
            self._local.depth = 1
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = self.times.setdefault(label(*args), OpTime())
                entry.cpu_s += time.process_time() - cpu
                entry.wall_s += time.perf_counter() - wall
                entry.calls += 1
                self._local.depth = 0

        return run


class _TimedWeight:
    """A prepared weight whose calls are timed; every other attribute is the weight's own."""

    def __init__(self, weight, call: Callable) -> None:
        object.__setattr__(self, "_weight", weight)
        object.__setattr__(self, "_call", call)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._weight, name)


def _is_weight(value: object) -> bool:
    return callable(value) and hasattr(value, "n") and hasattr(value, "k")


@contextmanager
def _instrumented(model, timer: _Timer) -> Iterator[None]:
    names: dict[int, str] = {}
    undo: list[Callable[[], None]] = []
    for layer in getattr(model, "layers", []):
        for attr, value in list(vars(layer).items()):
            if not _is_weight(value):
                continue
            names[id(value)] = attr
            proxy = _TimedWeight(value, timer.timed(lambda *_, a=attr: f"matmul {a}", value))
            setattr(layer, attr, proxy)
            names[id(proxy)] = attr
            undo.append(lambda layer=layer, attr=attr, value=value: setattr(layer, attr, value))

    def label(method: str) -> Callable[..., str]:
        def name(*args) -> str:
            weight = next((names[id(a)] for a in args if id(a) in names), None)
            return f"{method}({weight})" if weight else method

        return name

    for ops in {id(o): o for o in (getattr(model, a, None) for a in OP_SETS) if o is not None}.values():
        for method in OP_METHODS:
            if hasattr(ops, method):
                setattr(ops, method, timer.timed(label(method), getattr(ops, method)))
                undo.append(lambda ops=ops, method=method: delattr(ops, method))
    if getattr(model, "max_program_tokens", 0):
        limit, model.max_program_tokens = model.max_program_tokens, 0
        undo.append(lambda: setattr(model, "max_program_tokens", limit))
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


def profile_ops(embedder: Embedder, ids: Sequence[Sequence[int]], repeats: int = 3, batch_size: int = 32) -> dict:
    """Per-op CPU and wall seconds per ``encode_ids(ids)`` (mean of ``repeats`` after a warm-up),
    sorted by CPU time, with ``other`` for the rest of the call."""
    embedder.encode_ids(ids, batch_size=batch_size)
    timer = _Timer()
    cpu = wall = 0.0
    with _instrumented(embedder.model, timer):
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            embedder.encode_ids(ids, batch_size=batch_size)
            cpu += time.process_time() - c
            wall += time.perf_counter() - w
    ops = {k: v for k, v in sorted(timer.times.items(), key=lambda kv: -kv[1].cpu_s)}
    covered = OpTime(sum(v.cpu_s for v in ops.values()), sum(v.wall_s for v in ops.values()))
    ops[OTHER] = OpTime(max(cpu - covered.cpu_s, 0.0), max(wall - covered.wall_s, 0.0), repeats)
    return {
        "cpu_s": cpu / repeats,
        "wall_s": wall / repeats,
        "ops": {
            k: {"cpu_s": v.cpu_s / repeats, "wall_s": v.wall_s / repeats, "calls": v.calls // repeats}
            for k, v in ops.items()
        },
    }


def format_profile(kind: str, threads: int, profile: dict) -> list[str]:
    lines = [
        f"ops t={threads} {kind}: {1e3 * profile['cpu_s']:.1f} ms CPU, {1e3 * profile['wall_s']:.1f} ms wall per batch run"
    ]
    total = max(profile["cpu_s"], 1e-12)
    for name, t in profile["ops"].items():
        lines.append(
            f"  {name:28} cpu {1e3 * t['cpu_s']:9.1f} ms {100 * t['cpu_s'] / total:5.1f}%   "
            f"wall {1e3 * t['wall_s']:9.1f} ms   calls {t['calls']}"
        )
    return lines
