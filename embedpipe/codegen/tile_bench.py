"""Register tiles compared in one process: how the int8 matmul's tile (``TILES``) is chosen.

On a shared or throttled machine the speed of a core can move by whole factors from one
minute to the next, so timings from separate processes say little about a 5 % change. Here
every candidate tile gets its own kernel library (``KernelLibrary(tiles=…)``) in this
process, the candidates take turns in rounds over the same weights and activations, and each
is reported as the median of its per-round ratios to the first (the baseline): a slow minute
slows every candidate of that round alike. The products of every candidate are compared bit
for bit with the baseline's first (each token row runs the same instruction sequence
whatever the tile), so a tile that computes something else is an error, not a figure.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from embedpipe.codegen.bench import MODEL_SHAPES, call_seconds, random_weight
from embedpipe.codegen.ir_q8 import IntTile
from embedpipe.codegen.isa import detect_isa
from embedpipe.codegen.library import TILES, KernelLibrary
from embedpipe.codegen.quant_formats import FORMATS, aligned_empty
from embedpipe.codegen.threads import CACHE_LINE
from embedpipe.errors import EmbedpipeError

TOKENS: tuple[int, ...] = (32, 256)
# Calls of a product per timing, enough for a measurement of a few milliseconds.
_TARGET_OPS = 1e8
# MR·NV int32 and as many fp32 accumulators: 32 vector registers (AVX-512) hold at most 16 pairs.
_MAX_ACCUMULATORS = 16

_TILE = re.compile(r"^(\d+)x(\d+)(?:/(\d+))?$")


def parse_tile(text: str) -> IntTile:
    """``MRxNV`` or ``MRxNV/TC`` (token rows × weight vectors, rows per cache chunk: by default
    the largest multiple of MR up to 64)."""
    match = _TILE.match(text.strip())
    if not match:
        raise EmbedpipeError(f"tile {text!r} is not MRxNV or MRxNV/TC, e.g. 4x3 or 4x3/64")
    mr, nv = int(match[1]), int(match[2])
    tc = int(match[3]) if match[3] else max(mr, 64 // max(mr, 1) * mr)
    if not (mr >= 1 and nv >= 1 and mr * nv <= _MAX_ACCUMULATORS) or tc < mr or tc % mr:
        raise EmbedpipeError(f"tile {text!r}: need MR, NV >= 1, MR·NV <= {_MAX_ACCUMULATORS} and TC a multiple of MR")
    return IntTile(mr, nv, tc)


def label(tile: IntTile) -> str:
    return f"{tile.mr}x{tile.nv}/{tile.tc}"


@dataclass
class TileResult:
    tile: str
    k: int
    n: int
    tokens: int
    ms: float  # median over the rounds of each round's best call
    gops: float
    ratio: float  # median of the per-round ratios: baseline time / this tile's (>1 faster)


def run_tile_bench(
    tiles: Sequence[IntTile],
    isa: str | None = None,
    qtype: str = "Q8_0",
    tokens: Sequence[int] = TOKENS,
    threads: int | None = 1,
    rounds: int = 9,
    shapes: Sequence[tuple[int, int]] = MODEL_SHAPES,
    report: Callable[[str], None] = print,
) -> dict:
    """Time the ISA's own tile (``TILES``, the baseline) and ``tiles`` on every shape × T in
    ``rounds`` interleaved rounds; returns a JSON-able summary."""
    spec = detect_isa(override=isa)
    known = {q.name: q for q in FORMATS}
    if qtype not in known:
        raise EmbedpipeError(f"unknown weight type {qtype!r}; choose from {', '.join(sorted(known))}")
    fmt = FORMATS[known[qtype]]
    if fmt.family != "int":
        raise EmbedpipeError(f"{qtype} runs the float kernels; tiles are compared for integer types")
    own, float_tile = TILES[spec.name]
    candidates = list(dict.fromkeys([own, *tiles]))
    libraries = [KernelLibrary(spec, threads or 1, (tile, float_tile)) for tile in candidates]
    report(
        f"{spec.name}, {qtype}, {libraries[0].threads} thread(s), {rounds} interleaved rounds; "
        f"ratios to the ISA's own tile {label(own)} (>1 faster)"
    )
    report(f"{'tile':>10} {'K':>5} {'N':>5} {'T':>5} {'ms':>8} {'GOPS':>7} {'x base':>7}")
    rng = np.random.default_rng(0)
    results: list[TileResult] = []
    for k, n in shapes:
        if k % fmt.k_multiple:
            continue
        raw, _ = random_weight(known[qtype], n, k, rng)
        products = [lib.prepare_matmul(known[qtype], raw, n, k) for lib in libraries]
        for t in tokens:
            x = rng.standard_normal((t, k)).astype(np.float32)
            ys = [aligned_empty((t, n), np.float32, CACHE_LINE) for _ in products]
            for tile, mm, y in zip(candidates, products, ys):
                mm(x, y)
                if not np.array_equal(y, ys[0]):
                    raise EmbedpipeError(f"tile {label(tile)} computes other values than {label(own)}")
            calls = max(1, int(_TARGET_OPS / (2 * t * k * n)))
            times = [[] for _ in candidates]
            for _ in range(rounds):
                for i, (mm, y) in enumerate(zip(products, ys)):
                    times[i].append(_best_call(lambda mm=mm, x=x, y=y: mm(x, y), calls))
            for tile, per_round in zip(candidates, times):
                sec = statistics.median(per_round)
                ratio = statistics.median(b / s for b, s in zip(times[0], per_round))
                res = TileResult(label(tile), k, n, t, sec * 1e3, 2 * t * k * n / sec / 1e9, ratio)
                results.append(res)
                report(f"{res.tile:>10} {k:5} {n:5} {t:5} {res.ms:8.3f} {res.gops:7.1f} {res.ratio:7.3f}")
    return {
        "isa": spec.name,
        "qtype": qtype,
        "threads": libraries[0].threads,
        "rounds": rounds,
        "baseline": label(own),
        "results": [asdict(r) for r in results],
    }


def _best_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``fn``: the best of three runs of ``calls`` calls."""
    return min(sum(call_seconds(fn, calls, warmup=0)) / calls for _ in range(3))
