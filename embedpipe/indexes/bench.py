"""`embedpipe bench index`: our index configurations next to FAISS, usearch, annoy and hnswlib.

Same vectors and queries for everyone; build time, on-disk size, QPS for single queries (one
call per query) and batched (one call for all), recall@10 against exact fp32 search at the
same dim. Graph indexes — our HNSW fp32/int8, hnswlib, usearch, FAISS IndexHNSWFlat (and
IndexFlatIP) — are built in a fresh child process each, at the same M, ef_construction and
thread count, so each build's peak RSS is its own; `build_scaling` fits the build-time
exponent over several sizes. Approximate indexes are swept over their query knob (annoy search_k, HNSW ef) so
they can be compared at equal recall; the ratio rows pick, for each implementation, the
fastest point that reaches the target recall. Vectors: `--vectors F.npy`, an ingest output
directory, or a clearly labelled synthetic clustered set.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.base import normalize_rows, truncate_normalize
from embedpipe.indexes.recall import recall_vs_exact
from embedpipe.indexes.registry import build_index, load_index

SWEEP_SEARCH_K = (100, 200, 500, 1000, 2000, 4000, 8000)
SWEEP_EF = (16, 32, 48, 64, 96, 128, 192, 256)
TARGETS = {"annoy": 0.90, "hnsw": 0.95}


@dataclass
class Row:
    impl: str
    config: str
    knob: str = ""
    build_s: float = 0.0
    size_bytes: int = 0
    qps_single: float = 0.0
    qps_batch: float = 0.0
    recall_at_10: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


SYNTHETIC_BLOCK = 8192  # rows generated at a time: a whole float64 (n, d) chain would hold ~4 full-size temporaries


def synthetic_vectors(n: int, d: int, seed: int = 0, noise: float = 1.4) -> np.ndarray:
    """A stand-in for real embeddings, labelled as such in every output: a shared direction
    (embeddings are anisotropic), topics, sub-topics and per-row noise. With the default noise
    the mean top-1 / top-10 / median cosine of a held-out row is about 0.33 / 0.27 / 0.05.

    Generated in row blocks into one float32 array (1 M x 768 would otherwise peak at ~25 GB of
    float64 temporaries). The values are those of drawing the (n, d) noise and then the (n, 1)
    row scales in one call each: the noise stream is drawn twice, once only to reach the state
    the row scales are drawn from."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    topics = rng.standard_normal((max(8, n // 300), d))
    subs = rng.standard_normal((max(8, n // 30), d))
    topic_of = rng.integers(0, len(topics), len(subs))
    which = rng.integers(0, len(subs), n)
    noise_state = rng.bit_generator.state
    for lo in range(0, n, SYNTHETIC_BLOCK):
        rng.standard_normal((min(SYNTHETIC_BLOCK, n - lo), d))
    row_scale = rng.uniform(0.7, 1.3, (n, 1))
    rng.bit_generator.state = noise_state
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, SYNTHETIC_BLOCK):
        hi = min(n, lo + SYNTHETIC_BLOCK)
        w = which[lo:hi]
        x[lo:hi] = (
            0.35 * common
            + 0.55 * topics[topic_of[w]]
            + 0.45 * subs[w]
            + noise * rng.standard_normal((hi - lo, d)) * row_scale[lo:hi]
        )
        x[lo:hi] = normalize_rows(x[lo:hi])
    return x


def load_vectors(vectors: str | None, n: int, d: int) -> tuple[np.ndarray, str]:
    if vectors is None:
        return synthetic_vectors(n, d), f"SYNTHETIC clustered vectors ({n}x{d}), not real embeddings"
    path = Path(vectors)
    if path.is_dir():
        from embedpipe.pipeline.dataset import read_embeddings

        x = read_embeddings(path, keep_text=False).vectors
    else:
        x = np.load(path, mmap_mode="r")
    x = normalize_rows(np.asarray(x[:n], np.float32))
    return x, f"{path} ({len(x)}x{x.shape[1]})"


def _timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _measure(
    row: Row,
    single: Callable[[np.ndarray], Any],
    batch: Callable[[np.ndarray], Any],
    q: np.ndarray,
    n_single: int,
    truth: np.ndarray,
    repeats: int,
) -> Row:
    qs = q[:n_single]
    single(qs[0])  # warm-up (JIT compile, page-in)
    t_single, _ = _timed(lambda: [single(v) for v in qs], repeats)
    t_batch, found = _timed(lambda: batch(q), repeats)
    row.qps_single = len(qs) / t_single
    row.qps_batch = len(q) / t_batch
    row.recall_at_10 = recall_vs_exact(found, truth)
    return row


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _ours(x, q, truth, tmp: Path, repeats: int, n_single: int, report) -> list[Row]:
    rows: list[Row] = []
    configs = [
        ("brute", "fp32", {}),
        ("brute", "int16", {}),
        ("brute", "int8", {"scale_mode": "dim"}),
        ("brute", "int8", {"scale_mode": "vector"}),
        ("annoy", "fp32", {"n_trees": 50}),
    ]
    for kind, quant, params in configs:
        build_s, ix = _timed(
            lambda kind=kind, quant=quant, params=params: build_index(x, kind=kind, quant=quant, **params), 1
        )
        path = tmp / f"{kind}-{quant}-{len(rows)}"
        ix.save(path)
        ix = load_index(path)
        name = f"{kind} {quant}" + (f" scale={params['scale_mode']}" if "scale_mode" in params else "")
        knobs: list[tuple[str, dict]] = [("", {})]
        if kind == "annoy":
            knobs = [(f"search_k={s}", {"search_k": s}) for s in SWEEP_SEARCH_K]
        for knob, kw in knobs:

            def one(v, kw=kw, ix=ix):
                return ix.search_rows(v, 10, **kw)[1]

            def many(qq, kw=kw, ix=ix):
                return ix.search_rows(qq, 10, **kw)[1]

            row = _measure(
                Row("embedpipe", name, knob, build_s, ix.saved_bytes(path)), one, many, q, n_single, truth, repeats
            )
            rows.append(row)
            report(row)
    return rows


@dataclass
class GraphBench:
    """Shared settings of the graph indexes (ours and the references): same M,
    ef_construction and thread count for everyone."""

    m: int = 16
    efc: int = 200
    threads: int = 2
    ef_sweep: tuple[int, ...] = SWEEP_EF


IMPORTS = {"hnswlib": "hnswlib", "usearch": "usearch", "faiss-flat": "faiss", "faiss-hnsw": "faiss", "annoy": "annoy"}


def child_build(
    impl: str, npy: Path, out: Path, g: GraphBench, seed: int = 0, timeout: float | None = None
) -> dict[str, Any]:
    """Build with `impl` in a fresh process (see `bench_build`); its timing and RSS. The child's
    stderr (our progress bar, errors) goes to ours; past `timeout` seconds it is killed
    (`subprocess.TimeoutExpired`)."""
    import importlib.util

    if impl in IMPORTS and importlib.util.find_spec(IMPORTS[impl]) is None:
        raise ImportError(f"no module named {IMPORTS[impl]!r}")
    params = json.dumps({"m": g.m, "efc": g.efc, "threads": g.threads, "seed": seed, "progress": True})
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.indexes.bench_build", impl, str(npy), str(out), params],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, "TQDM_MININTERVAL": "30"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} build failed (exit {proc.returncode}; its messages are above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _searchers(
    impl: str, path: Path, n: int, d: int, threads: int
) -> tuple[Callable[[int], None], Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]:
    """(set_ef, single(v) -> ids, batch(q) -> ids) for a saved graph index."""
    if impl.startswith("embedpipe"):
        ix = load_index(path)
        state = {"ef": 64}
        return (
            lambda ef: state.update(ef=ef),
            lambda v: ix.search_rows(v, 10, ef_search=state["ef"])[1],
            lambda qq: ix.search_rows(qq, 10, ef_search=state["ef"])[1],
        )
    if impl == "hnswlib":
        import hnswlib

        h = hnswlib.Index(space="ip", dim=d)
        h.load_index(str(path), max_elements=n)
        return (
            lambda ef: h.set_ef(max(ef, 10)),
            lambda v: h.knn_query(v[None, :], 10, num_threads=1)[0],
            lambda qq: h.knn_query(qq, 10, num_threads=threads)[0],
        )
    if impl == "usearch":
        from usearch.index import Index

        u = Index.restore(str(path))

        def set_ef(ef: int) -> None:
            u.expansion_search = ef

        return (set_ef, lambda v: u.search(v, 10, threads=1).keys, lambda qq: u.search(qq, 10, threads=threads).keys)
    import faiss

    f = faiss.read_index(str(path))
    faiss.omp_set_num_threads(threads)

    def set_ef_faiss(ef: int) -> None:
        if hasattr(f, "hnsw"):
            f.hnsw.efSearch = ef

    return (set_ef_faiss, lambda v: f.search(v[None, :], 10)[1], lambda qq: f.search(qq, 10)[1])


GRAPH_IMPLS: dict[str, str] = {  # impl -> label
    "embedpipe-hnsw-fp32": "hnsw fp32",
    "embedpipe-hnsw-int8": "hnsw int8",
    "hnswlib": "hnswlib fp32",
    "usearch": "usearch f32",
    "faiss-hnsw": "IndexHNSWFlat fp32",
    "faiss-flat": "IndexFlatIP fp32",
}


def _graph(
    impl: str, x, q, truth, tmp: Path, repeats, n_single, report, g: GraphBench, timeout: float | None = None
) -> list[Row]:
    npy = tmp / "base.npy"
    if not npy.exists():
        np.save(npy, x)
    out = tmp / f"{impl}.idx"
    built = child_build(impl, npy, out, g, timeout=timeout)
    set_ef, single, batch = _searchers(impl, out, len(x), x.shape[1], g.threads)
    owner = impl.split("-")[0]
    label = GRAPH_IMPLS[impl] + ("" if impl == "faiss-flat" else f" M={g.m} efc={g.efc}")
    rows = []
    for ef in (0,) if impl == "faiss-flat" else g.ef_sweep:
        if ef:
            set_ef(ef)
        row = _measure(
            Row(owner, label, f"ef={ef}" if ef else "", built["build_s"], _size(out)),
            single,
            batch,
            q,
            n_single,
            truth,
            repeats,
        )
        row.extra = {
            "peak_rss_mb": round(built["peak_rss_kb"] / 1024, 1),
            "build_rss_mb": round((built["peak_rss_kb"] - built["rss_before_kb"]) / 1024, 1),
            "build_cpu_s": round(built["cpu_s"], 2),
            "threads": g.threads,
        }
        rows.append(row)
        report(row)
    return rows


def build_scaling(
    sizes: tuple[int, ...],
    dim: int,
    impls: tuple[str, ...],
    g: GraphBench,
    report: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Build time of each impl at each size (synthetic vectors) and the fitted exponent b of
    time ∝ n^b, over wall and over CPU time (n log n over 10×n gives b ≈ 1.1)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="embedpipe-scaling-") as tmp:
        times: dict[str, list[dict[str, float]]] = {i: [] for i in impls}
        for n in sizes:
            npy = Path(tmp) / f"x{n}.npy"
            np.save(npy, synthetic_vectors(n, dim, seed=5))
            for impl in impls:
                t = child_build(impl, npy, Path(tmp) / f"{impl}-{n}", g)
                times[impl].append(t)
                report(f"scaling {impl} n={n}: build {t['build_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU")
            npy.unlink()

        def fit(ts: list[float]) -> float | None:
            return round(float(np.polyfit(np.log(sizes), np.log(ts), 1)[0]), 3) if len(sizes) > 1 else None

        for impl, ts in times.items():
            wall, cpu = [t["build_s"] for t in ts], [t["cpu_s"] for t in ts]
            out[impl] = {
                "sizes": list(sizes),
                "build_s": [round(t, 2) for t in wall],
                "cpu_s": [round(t, 2) for t in cpu],
                "exponent": fit(wall),
                "exponent_cpu": fit(cpu),
            }
    return out


def _annoy(x, q, truth, tmp, repeats, n_single, report) -> list[Row]:
    import annoy

    def build():
        a = annoy.AnnoyIndex(x.shape[1], "angular")
        a.set_seed(1)
        for i, v in enumerate(x):
            a.add_item(i, v)
        a.build(50, n_jobs=-1)
        return a

    build_s, a = _timed(build, 1)
    a.save(str(tmp / "spotify.ann"))
    rows = []
    for s in SWEEP_SEARCH_K:
        row = _measure(
            Row("annoy", "spotify annoy fp32 50 trees", f"search_k={s}", build_s, _size(tmp / "spotify.ann")),
            lambda v, s=s: a.get_nns_by_vector(v, 10, search_k=s),
            lambda qq, s=s: np.array([a.get_nns_by_vector(v, 10, search_k=s) for v in qq]),
            q,
            n_single,
            truth,
            repeats,
        )
        rows.append(row)
        report(row)
    return rows


# --ref name -> the graph implementations it stands for (annoy is built in this process)
REFERENCES: dict[str, tuple[str, ...]] = {
    "hnswlib": ("hnswlib",),
    "usearch": ("usearch",),
    "faiss": ("faiss-flat", "faiss-hnsw"),
    "annoy": ("annoy",),
}
# the order graph builds run in: the ratios' reference and ours first, so a run cut short by
# its wall budget still has them
ORDER = ("hnswlib", "embedpipe-hnsw-fp32", "faiss-flat", "embedpipe-hnsw-int8", "usearch", "faiss-hnsw", "annoy")


def _best_at(rows: list[Row], impl: str, prefix: str, target: float, key: str) -> Row | None:
    ok = [r for r in rows if r.impl == impl and r.config.startswith(prefix) and r.recall_at_10 >= target]
    return max(ok, key=lambda r: getattr(r, key)) if ok else None


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Same-run comparisons behind the issue's targets: QPS at equal recall, build time, RSS."""
    out = []
    hnsw_target = TARGETS["hnsw"]
    pairs = [
        (
            "brute int8 scale=dim vs faiss IndexFlatIP",
            ("embedpipe", "brute int8 scale=dim"),
            ("faiss", "IndexFlatIP"),
            0.0,
        ),
        ("annoy vs spotify annoy @recall>=0.90", ("embedpipe", "annoy"), ("annoy", "spotify"), TARGETS["annoy"]),
    ]
    for ours in ("hnsw fp32", "hnsw int8"):
        for ref_impl, ref_cfg in (("hnswlib", "hnswlib"), ("usearch", "usearch"), ("faiss", "IndexHNSWFlat")):
            pairs.append(
                (f"{ours} vs {ref_cfg} @recall>={hnsw_target}", ("embedpipe", ours), (ref_impl, ref_cfg), hnsw_target)
            )
    for label, (oi, oc), (ri, rc), target in pairs:
        entry: dict[str, Any] = {"comparison": label}
        for key in ("qps_single", "qps_batch"):
            ours_r, ref = _best_at(rows, oi, oc, target, key), _best_at(rows, ri, rc, target, key)
            if ours_r is None or ref is None:
                entry[key] = None
                continue
            entry[key] = {
                "ours": round(getattr(ours_r, key), 1),
                "ours_knob": ours_r.knob,
                "ref": round(getattr(ref, key), 1),
                "ref_knob": ref.knob,
                "ratio": round(getattr(ours_r, key) / getattr(ref, key), 3),
            }
        mine = [r for r in rows if r.impl == oi and r.config.startswith(oc)]
        theirs = [r for r in rows if r.impl == ri and r.config.startswith(rc)]
        if mine and theirs:
            entry["build_time_ratio"] = round(mine[0].build_s / theirs[0].build_s, 3)
            if "build_cpu_s" in mine[0].extra and "build_cpu_s" in theirs[0].extra:
                entry["build_cpu_ratio"] = round(mine[0].extra["build_cpu_s"] / theirs[0].extra["build_cpu_s"], 3)
            entry["size_ratio"] = round(mine[0].size_bytes / theirs[0].size_bytes, 3)
            if "peak_rss_mb" in mine[0].extra and "peak_rss_mb" in theirs[0].extra:
                entry["peak_rss_ratio"] = round(mine[0].extra["peak_rss_mb"] / theirs[0].extra["peak_rss_mb"], 3)
        out.append(entry)
    return out


class Budget:
    """The wall-clock budget of a bench run: a step starts only while some is left, and a
    child build is killed when it runs out."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def size_summary(rows: list[Row]) -> dict[str, Any] | None:
    """Our int8 vs fp32 HNSW file: the ratio and where the bytes go (vectors vs graph)."""
    by = {r.config.split(" M=")[0]: r for r in rows if r.impl == "embedpipe" and r.config.startswith("hnsw ")}
    if "hnsw fp32" not in by or "hnsw int8" not in by:
        return None
    fp32, int8 = by["hnsw fp32"].size_bytes, by["hnsw int8"].size_bytes
    return {"fp32_bytes": fp32, "int8_bytes": int8, "fp32_over_int8": round(fp32 / int8, 3)}


def run_index_bench(
    n: int = 200_000,
    dim: int = 768,
    vectors: str | None = None,
    queries: int = 500,
    n_single: int = 200,
    repeats: int = 3,
    references: tuple[str, ...] = tuple(REFERENCES),
    report: Callable[[Row], None] = lambda r: None,
    graph: GraphBench | None = None,
    ours_flat: bool = True,
    budget_s: float | None = None,
    out: Path | None = None,
    note: Callable[[str], None] = lambda s: None,
    ours: tuple[str, ...] = ("fp32", "int8"),
) -> dict[str, Any]:
    """Run everything; returns {"data", "rows", "ratios", "skipped", …}. Graph indexes (ours and
    the references) are built in child processes at the same M / ef_construction / threads, in
    `ORDER`; `ours` picks our HNSW element types. With `budget_s`, no step starts after that many seconds and a build still running
    then is killed (both listed under "skipped"); with `out`, the summary so far is rewritten
    there after every step, so a run cut short still leaves its results."""
    bad = [quant for quant in ours if f"embedpipe-hnsw-{quant}" not in ORDER]
    if bad:
        raise EmbedpipeError(f"--ours takes fp32 and/or int8, not {', '.join(bad)}")
    g = graph or GraphBench()
    budget = Budget(budget_s)
    x, label = load_vectors(vectors, n + queries, dim)
    if x.shape[1] > dim:
        x = truncate_normalize(x, dim)
        label += f", truncated to {dim}"
    base, q = np.ascontiguousarray(x[:-queries]), np.ascontiguousarray(x[-queries:])
    del x
    truth = _exact_top10(base, q)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    wanted = {impl for name in references for impl in REFERENCES[name]}
    wanted |= {f"embedpipe-hnsw-{quant}" for quant in ours}
    steps = [i for i in ORDER if i in wanted]

    def summary(done: bool) -> dict[str, Any]:
        return {
            "data": label,
            "n": len(base),
            "queries": len(q),
            "dim": base.shape[1],
            "threads": g.threads,
            "m": g.m,
            "ef_construction": g.efc,
            "complete": done,
            "elapsed_s": round(budget.elapsed(), 1),
            "rows": [asdict(r) for r in rows],
            "ratios": ratios(rows),
            "int8_size": size_summary(rows),
            "skipped": skipped,
        }

    with tempfile.TemporaryDirectory(prefix="embedpipe-bench-") as tmp:
        for impl in steps + (["embedpipe-flat"] if ours_flat else []):
            if budget.spent():
                skipped[impl] = f"not started: the {budget.seconds:.0f} s wall budget was spent"
                continue
            note(f"[{budget.elapsed():7.0f} s] {impl}: building {len(base)} x {base.shape[1]}")
            t0 = time.perf_counter()
            try:
                if impl == "embedpipe-flat":
                    got = _ours(base, q, truth, Path(tmp), repeats, n_single, report)
                elif impl == "annoy":
                    got = _annoy(base, q, truth, Path(tmp), repeats, n_single, report)
                else:
                    got = _graph(impl, base, q, truth, Path(tmp), repeats, n_single, report, g, budget.left())
                rows += got
                note(f"[{budget.elapsed():7.0f} s] {impl}: done in {time.perf_counter() - t0:.0f} s")
            except ImportError as exc:
                skipped[impl] = f"not installed ({exc}); pip install embedpipe[bench]"
            except subprocess.TimeoutExpired:
                skipped[impl] = f"build killed when the {budget.seconds:.0f} s wall budget ran out"
            except RuntimeError as exc:
                skipped[impl] = str(exc)
            if impl in skipped:
                note(f"[{budget.elapsed():7.0f} s] {impl}: skipped: {skipped[impl]}")
            if out is not None:
                _write_json(out, summary(False))
    result = summary(True)
    if out is not None:
        _write_json(out, result)
    return result


def _exact_top10(base: np.ndarray, q: np.ndarray) -> np.ndarray:
    from embedpipe.indexes.base import topk_desc

    out = np.empty((len(q), 10), np.int64)
    for lo in range(0, len(q), 100):
        out[lo : lo + 100] = topk_desc(q[lo : lo + 100] @ base.T, 10)[1]
    return out


def format_row(r: Row) -> str:
    rss = f"  peak RSS {r.extra['peak_rss_mb']:7.0f}MB" if "peak_rss_mb" in r.extra else ""
    return (
        f"{r.impl:10s} {r.config:34s} {r.knob:8s} build {r.build_s:7.2f}s "
        f"size {r.size_bytes / 1e6:7.1f}MB  single {r.qps_single:8.0f} q/s  "
        f"batch {r.qps_batch:8.0f} q/s  recall@10 {r.recall_at_10:.4f}{rss}"
    )


def update_bench(
    n: int, dim: int, g: GraphBench, fraction: float = 0.1, queries: int = 500, ef: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Our HNSW: a full build of n rows vs a build of (1 − fraction)·n plus `add` of the rest:
    update time as a share of the full build, and recall@10 of both at the same ef_search."""
    import os

    os.environ["EMBEDPIPE_THREADS"] = str(g.threads)
    x = synthetic_vectors(n + queries, dim, seed=seed)
    base, q = x[:n], x[n:]
    truth = _exact_top10(base, q)
    t0 = time.perf_counter()
    full = build_index(base, kind="hnsw", m=g.m, ef_construction=g.efc)
    full_s = time.perf_counter() - t0
    cut = int(n * (1 - fraction))
    part = build_index(base[:cut], kind="hnsw", m=g.m, ef_construction=g.efc)
    t0 = time.perf_counter()
    part.add(base[cut:])
    update_s = time.perf_counter() - t0

    def rec(ix: Any) -> float:
        return recall_vs_exact(ix.search_rows(q, 10, ef_search=ef)[1], truth)

    return {
        "n": n,
        "new_rows": n - cut,
        "full_build_s": round(full_s, 2),
        "update_s": round(update_s, 2),
        "update_share": round(update_s / full_s, 3),
        "ef_search": ef,
        "recall_full": round(rec(full), 4),
        "recall_updated": round(rec(part), 4),
    }
