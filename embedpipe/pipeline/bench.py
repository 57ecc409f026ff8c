"""`embedpipe bench ingest`: pipeline overhead vs Embedder.encode, cache speedup, peak RSS vs rows.

Everything is measured in the same run: encode and ingest alternate, medians are reported, and
the overhead is ingest(no cache) / encode - 1 on the same texts, model and batch size.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.job import ingest

WORDS = (
    "search vector index bread flour water salt yeast parquet stream batch token model query document "
    "river mountain city night music garden window paper light stone"
).split()


def synthetic_texts(n: int, seed: int = 0, max_words: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, max_words + 1)))) for _ in range(n)]


def load_texts(path: str | None, n: int, text_col: str = "text") -> list[str]:
    if path is None:
        return synthetic_texts(n)
    texts = pq.read_table(path, columns=[text_col]).column(text_col).to_pylist()[:n]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds over all threads, result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def run_ingest_bench(
    model: str | None,
    input_path: str | None,
    n: int,
    task: str,
    dim: int | None,
    backend: str,
    threads: int | None,
    repeats: int,
    report: Callable[[str], None] = print,
    any_dim: bool = False,
) -> dict:
    """Time `Embedder.encode` against `ingest` (no cache, cold and warm cache) on the same `n`
    texts; `dim` is one of the model's Matryoshka widths, or any width up to it with `any_dim`."""
    from embedpipe.runtime.dims import check_dim
    from embedpipe.runtime.embedder import Embedder

    for name, value in (("n", n), ("repeats", repeats)):
        if value < 1:
            raise ArgumentError(name, f"must be >= 1, got {value}")
    emb = Embedder.load(model, backend=backend, threads=threads)
    dim = check_dim(dim, emb.dims, any_dim)  # before any work, naming the flag that allows others
    texts = load_texts(input_path, n)
    if not texts:
        raise EmbedpipeError(f"{input_path}: no non-empty texts in its text column")
    work = Path(tempfile.mkdtemp(prefix="embedpipe-bench-ingest-"))
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), corpus)

    def cfg(out: str, **kw) -> IngestConfig:
        return IngestConfig(
            inputs=[str(corpus)],
            output=str(work / out),
            task=task,
            dim=dim,
            any_dim=any_dim,
            progress=False,
            overwrite=True,
            **kw,
        )

    times: dict[str, list[tuple[float, float, object]]] = {"encode": [], "ingest": [], "warm": []}
    emb.encode(texts[:8], task=task, dim=dim, any_dim=any_dim)  # warm-up: kernels compiled, caches touched
    cold_s = _timed(lambda: ingest(cfg("cold", cache_dir=str(work / "cache")), embedder=emb))[0]
    for r in range(repeats):
        runs = [
            ("encode", lambda: emb.encode(texts, task=task, dim=dim, batch_size=32, any_dim=any_dim)),
            ("ingest", lambda: ingest(cfg("nocache", cache=False), embedder=emb)),
            ("warm", lambda: ingest(cfg("warm", cache_dir=str(work / "cache")), embedder=emb)),
        ]
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            times[name].append(_timed(fn))
    med = {
        name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()
    }
    (enc, enc_cpu), (ing, ing_cpu), (warm, _) = med["encode"], med["ingest"], med["warm"]
    # time ingest spends outside Embedder.encode_ids, per run (less sensitive to a busy machine)
    outside = statistics.median(w - s.embed_seconds for w, _, s in times["ingest"])
    result = {
        "model": emb.model_path,
        "texts": len(texts),
        "input": input_path or "synthetic",
        "repeats": repeats,
        "backend": backend,
        "encode_s": round(enc, 4),
        "ingest_s": round(ing, 4),
        "overhead_pct": round(100 * (ing / enc - 1), 2),
        "encode_cpu_s": round(enc_cpu, 4),
        "ingest_cpu_s": round(ing_cpu, 4),
        "overhead_cpu_pct": round(100 * (ing_cpu / enc_cpu - 1), 2),
        "outside_model_s": round(outside, 4),
        "outside_model_pct": round(100 * outside / enc, 2),
        "cache_cold_s": round(cold_s, 4),
        "cache_warm_s": round(warm, 4),
        "cache_speedup": round(cold_s / warm, 1),
        "work_dir": str(work),
    }
    report(f"model {Path(emb.model_path).name}, {len(texts)} texts ({result['input']}), median of {repeats}")
    report(f"Embedder.encode          {enc:8.3f} s wall {enc_cpu:8.3f} s cpu")
    report(
        f"ingest (--no-cache)      {ing:8.3f} s wall {ing_cpu:8.3f} s cpu   overhead {result['overhead_pct']:+.2f} % wall, "
        f"{result['overhead_cpu_pct']:+.2f} % cpu"
    )
    report(f"  of which outside the model {outside:8.3f} s = {result['outside_model_pct']:.2f} % of encode")
    report(f"ingest, cache cold       {cold_s:8.3f} s")
    report(f"ingest, cache warm       {warm:8.3f} s   speedup {result['cache_speedup']:.1f}x")
    return result


RSS_SCRIPT = """
import json, resource, sys
from embedpipe.pipeline import IngestConfig, ingest
cfg = IngestConfig(**json.loads(sys.argv[1]))
summary = ingest(cfg)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": summary.rows_in}))
"""


def peak_rss(model: str, rows: int, work: Path, **cfg: str | int | bool | list[str] | None) -> dict:
    """Ingest `rows` synthetic texts in a fresh process; its peak RSS (kB) from getrusage."""
    corpus = work / f"rss-{rows}.parquet"
    writer = pq.ParquetWriter(corpus, pa.schema([("text", pa.string())]))
    for start in range(0, rows, 10000):
        writer.write_table(pa.table({"text": synthetic_texts(min(10000, rows - start), seed=start, max_words=6)}))
    writer.close()
    conf = {
        "inputs": [str(corpus)],
        "output": str(work / f"rss-out-{rows}"),
        "model": model,
        "progress": False,
        "overwrite": True,
        "cache": False,
        **cfg,
    }
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, json.dumps(conf)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": root},
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rss_bench(
    model: str,
    rows: int,
    factor: int,
    report: Callable[[str], None] = print,
    **cfg: str | int | bool | list[str] | None,
) -> dict:
    for name, value in (("rows", rows), ("factor", factor)):
        if value < 1:
            raise ArgumentError(name, f"must be >= 1, got {value}")
    work = Path(tempfile.mkdtemp(prefix="embedpipe-bench-rss-"))
    small = peak_rss(model, rows, work, **cfg)
    large = peak_rss(model, rows * factor, work, **cfg)
    growth = 100 * (large["maxrss_kb"] / small["maxrss_kb"] - 1)
    report(
        f"peak RSS {rows} rows: {small['maxrss_kb'] / 1024:.1f} MiB; {rows * factor} rows: "
        f"{large['maxrss_kb'] / 1024:.1f} MiB; growth {growth:+.1f} %"
    )
    return {
        "rows": rows,
        "factor": factor,
        "small_kb": small["maxrss_kb"],
        "large_kb": large["maxrss_kb"],
        "growth_pct": round(growth, 2),
    }
