"""`embedpipe bench index`: our index configurations next to FAISS, annoy and hnswlib.

Same vectors and queries for everyone; build time, on-disk size, QPS for single queries (one
call per query) and batched (one call for all), recall@10 against exact fp32 search at the
same dim. Approximate indexes are swept over their query knob (annoy search_k, HNSW ef_search) so
they can be compared at equal recall; the ratio rows pick, for each implementation, the
fastest point that reaches the target recall. Vectors: `--vectors F.npy`, an ingest output
directory, or a clearly labelled synthetic clustered set.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.base import normalize_rows, truncate_normalize
from embedpipe.indexes.recall import recall_vs_exact
from embedpipe.indexes.registry import build_index, load_index

SWEEP_SEARCH_K = (100, 200, 500, 1000, 2000, 4000, 8000)
SWEEP_EF = (10, 16, 24, 32, 48, 64, 96, 128)
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


def synthetic_vectors(n: int, d: int, seed: int = 0, noise: float = 1.4) -> np.ndarray:
    """A stand-in for real embeddings, labelled as such in every output: a shared direction
    (embeddings are anisotropic), topics, sub-topics and per-row noise. With the default noise
    the mean top-1 / top-10 / median cosine of a held-out row is about 0.33 / 0.27 / 0.05."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    topics = rng.standard_normal((max(8, n // 300), d))
    subs = rng.standard_normal((max(8, n // 30), d))
    topic_of = rng.integers(0, len(topics), len(subs))
    which = rng.integers(0, len(subs), n)
    x = (0.35 * common + 0.55 * topics[topic_of[which]] + 0.45 * subs[which]
         + noise * rng.standard_normal((n, d)) * rng.uniform(0.7, 1.3, (n, 1)))
    return normalize_rows(x.astype(np.float32))


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


def _measure(row: Row, single: Callable[[np.ndarray], Any], batch: Callable[[np.ndarray], Any],
             q: np.ndarray, n_single: int, truth: np.ndarray, repeats: int) -> Row:
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
    configs = [("brute", "fp32", {}), ("brute", "int16", {}),
               ("brute", "int8", {"scale_mode": "dim"}), ("brute", "int8", {"scale_mode": "vector"}),
               ("annoy", "fp32", {"n_trees": 50}), ("hnsw", "fp32", {"m": 16, "ef_construction": 100}),
               ("hnsw", "int8", {"m": 16, "ef_construction": 100})]
    for kind, quant, params in configs:
        build_s, ix = _timed(lambda kind=kind, quant=quant, params=params:
                             build_index(x, kind=kind, quant=quant, **params), 1)
        path = tmp / f"{kind}-{quant}-{len(rows)}"
        ix.save(path)
        ix = load_index(path)
        name = f"{kind} {quant}" + (f" scale={params['scale_mode']}" if "scale_mode" in params else "")
        knobs: list[tuple[str, dict]] = [("", {})]
        if kind == "annoy":
            knobs = [(f"search_k={s}", {"search_k": s}) for s in SWEEP_SEARCH_K]
        if kind == "hnsw":
            knobs = [(f"ef_search={e}", {"ef_search": e}) for e in SWEEP_EF]
        for knob, kw in knobs:
            def one(v, kw=kw, ix=ix):
                return ix.search_rows(v, 10, **kw)[1]

            def many(qq, kw=kw, ix=ix):
                return ix.search_rows(qq, 10, **kw)[1]

            row = _measure(Row("embedpipe", name, knob, build_s, ix.saved_bytes(path)), one, many, q,
                           n_single, truth, repeats)
            rows.append(row)
            report(row)
    return rows


def _faiss(x, q, truth, tmp, repeats, n_single, report) -> list[Row]:
    import faiss

    build_s, ix = _timed(lambda: (lambda i: (i.add(x), i)[1])(faiss.IndexFlatIP(x.shape[1])), 1)
    faiss.write_index(ix, str(tmp / "faiss.idx"))
    rows = []
    # single queries: FAISS's OpenMP threads are far slower than one thread on a busy machine,
    # so measure both and keep each mode's best
    for threads in (1, faiss.omp_get_max_threads()):
        saved = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        row = _measure(Row("faiss", f"IndexFlatIP fp32 omp={threads}", "", build_s,
                           _size(tmp / "faiss.idx")),
                       lambda v: ix.search(v[None, :], 10)[1], lambda qq: ix.search(qq, 10)[1],
                       q, n_single, truth, repeats)
        faiss.omp_set_num_threads(saved)
        rows.append(row)
        report(row)
    return rows


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
        row = _measure(Row("annoy", "spotify annoy fp32 50 trees", f"search_k={s}", build_s,
                           _size(tmp / "spotify.ann")),
                       lambda v, s=s: a.get_nns_by_vector(v, 10, search_k=s),
                       lambda qq, s=s: np.array([a.get_nns_by_vector(v, 10, search_k=s)
                                                 for v in qq]), q, n_single, truth, repeats)
        rows.append(row)
        report(row)
    return rows


def _hnswlib(x, q, truth, tmp, repeats, n_single, report) -> list[Row]:
    import hnswlib

    def build():
        h = hnswlib.Index(space="ip", dim=x.shape[1])
        h.init_index(max_elements=len(x), M=16, ef_construction=100, random_seed=1)
        h.add_items(x, np.arange(len(x)))
        return h

    build_s, h = _timed(build, 1)
    h.save_index(str(tmp / "hnswlib.bin"))
    rows = []
    for ef in SWEEP_EF:
        h.set_ef(max(ef, 10))
        row = _measure(Row("hnswlib", "hnswlib fp32 M=16 efc=100", f"ef={ef}", build_s,
                           _size(tmp / "hnswlib.bin")),
                       lambda v: h.knn_query(v[None, :], 10, num_threads=1)[0],
                       lambda qq: h.knn_query(qq, 10)[0], q, n_single, truth, repeats)
        rows.append(row)
        report(row)
    return rows


REFERENCES: dict[str, Callable[..., list[Row]]] = {"faiss": _faiss, "annoy": _annoy,
                                                   "hnswlib": _hnswlib}


def _best_at(rows: list[Row], impl: str, prefix: str, target: float, key: str) -> Row | None:
    ok = [r for r in rows if r.impl == impl and r.config.startswith(prefix)
          and r.recall_at_10 >= target]
    return max(ok, key=lambda r: getattr(r, key)) if ok else None


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Same-run comparisons: for each pair, the fastest point of each side at the target recall."""
    out = []
    pairs = [("brute int8 scale=dim vs faiss IndexFlatIP", ("embedpipe", "brute int8 scale=dim"),
              ("faiss", "IndexFlatIP"), 0.0),
             ("brute int8 scale=vector vs faiss IndexFlatIP",
              ("embedpipe", "brute int8 scale=vector"), ("faiss", "IndexFlatIP"), 0.0),
             ("annoy vs spotify annoy @recall>=0.90", ("embedpipe", "annoy"),
              ("annoy", "spotify"), TARGETS["annoy"]),
             ("hnsw fp32 vs hnswlib @recall>=0.95", ("embedpipe", "hnsw fp32"),
              ("hnswlib", "hnswlib"), TARGETS["hnsw"]),
             ("hnsw int8 vs hnswlib @recall>=0.95", ("embedpipe", "hnsw int8"),
              ("hnswlib", "hnswlib"), TARGETS["hnsw"])]
    for label, (oi, oc), (ri, rc), target in pairs:
        entry: dict[str, Any] = {"comparison": label}
        for key in ("qps_single", "qps_batch"):
            ours, ref = _best_at(rows, oi, oc, target, key), _best_at(rows, ri, rc, target, key)
            if ours is None or ref is None:
                entry[key] = None
                continue
            entry[key] = {"ours": round(getattr(ours, key), 1), "ours_knob": ours.knob,
                          "ref": round(getattr(ref, key), 1), "ref_knob": ref.knob,
                          "ratio": round(getattr(ours, key) / getattr(ref, key), 3)}
        out.append(entry)
    return out


def run_index_bench(n: int = 10000, dim: int = 768, vectors: str | None = None,
                    queries: int = 500, n_single: int = 200, repeats: int = 3,
                    references: tuple[str, ...] = tuple(REFERENCES),
                    report: Callable[[Row], None] = lambda r: None) -> dict[str, Any]:
    """Run everything; returns {"data", "rows", "ratios", "skipped"}."""
    x, label = load_vectors(vectors, n + queries, dim)
    if x.shape[1] > dim:
        x = truncate_normalize(x, dim)
        label += f", truncated to {dim}"
    base, q = np.ascontiguousarray(x[:-queries]), np.ascontiguousarray(x[-queries:])
    truth = np.argsort(-(q @ base.T), axis=1)[:, :10]
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="embedpipe-bench-") as tmp:
        rows += _ours(base, q, truth, Path(tmp), repeats, n_single, report)
        for name in references:
            try:
                rows += REFERENCES[name](base, q, truth, Path(tmp), repeats, n_single, report)
            except ImportError as exc:
                skipped[name] = f"not installed ({exc}); pip install embedpipe[bench]"
    return {"data": label, "n": len(base), "queries": len(q), "dim": base.shape[1],
            "threads": os.cpu_count(), "rows": [asdict(r) for r in rows],
            "ratios": ratios(rows), "skipped": skipped}


def format_row(r: Row) -> str:
    return (f"{r.impl:10s} {r.config:34s} {r.knob:15s} build {r.build_s:7.2f}s "
            f"size {r.size_bytes / 1e6:7.1f}MB  single {r.qps_single:8.0f} q/s  "
            f"batch {r.qps_batch:8.0f} q/s  recall@10 {r.recall_at_10:.4f}")
