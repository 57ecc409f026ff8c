"""One index build of `embedpipe bench index`, run in a fresh process so its peak RSS is its own.

``python -m embedpipe.indexes.bench_build IMPL VECTORS.npy OUT PARAMS_JSON`` loads the vectors
fully into memory, notes the resident set size, builds with `IMPL` at the given M,
ef_construction and thread count, saves to OUT and prints one JSON line: build wall and CPU
seconds (CPU time is steadier than wall time on a shared machine), the process's peak RSS (VmHWM) and its RSS before the build (interpreter + vectors), so the bench
can report both the peak and what the build itself added.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _ours(quant: str) -> Callable[..., None]:
    def build(x: np.ndarray, out: str, p: dict[str, Any]) -> None:
        import os

        from embedpipe.indexes import Builder

        os.environ["EMBEDPIPE_THREADS"] = str(p["threads"])
        builder = Builder("hnsw", quant, None, None, m=p["m"], ef_construction=p["efc"], seed=p.get("seed", 0))
        # the loaded vectors are handed over (normalized in place, no second copy), as hnswlib
        # is handed them to copy into its own graph memory
        builder.add(x, copy=False).build(progress=p.get("progress", False)).save(out)

    return build


def _hnswlib(x: np.ndarray, out: str, p: dict[str, Any]) -> None:
    import hnswlib

    h = hnswlib.Index(space="ip", dim=x.shape[1])
    h.init_index(max_elements=len(x), M=p["m"], ef_construction=p["efc"], random_seed=1)
    h.add_items(x, np.arange(len(x)), num_threads=p["threads"])
    h.save_index(out)


def _usearch(x: np.ndarray, out: str, p: dict[str, Any]) -> None:
    from usearch.index import Index

    ix = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=p["m"], expansion_add=p["efc"])
    ix.add(np.arange(len(x)), x, threads=p["threads"])
    ix.save(out)


def _faiss(kind: str) -> Callable[..., None]:
    def build(x: np.ndarray, out: str, p: dict[str, Any]) -> None:
        import faiss

        faiss.omp_set_num_threads(p["threads"])
        if kind == "flat":
            ix = faiss.IndexFlatIP(x.shape[1])
        else:
            ix = faiss.IndexHNSWFlat(x.shape[1], p["m"], faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = p["efc"]
        ix.add(x)
        faiss.write_index(ix, out)

    return build


BUILDERS: dict[str, Callable[..., None]] = {
    "embedpipe-hnsw-fp32": _ours("fp32"),
    "embedpipe-hnsw-int8": _ours("int8"),
    "hnswlib": _hnswlib,
    "usearch": _usearch,
    "faiss-flat": _faiss("flat"),
    "faiss-hnsw": _faiss("hnsw"),
}


def main(argv: list[str]) -> None:
    impl, vectors, out, params = argv
    p = json.loads(params)
    x = np.ascontiguousarray(np.load(vectors), np.float32)
    before = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    BUILDERS[impl](x, out, p)
    build_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"build_s": build_s, "cpu_s": cpu_s, "peak_rss_kb": _status_kb("VmHWM"), "rss_before_kb": before}))


if __name__ == "__main__":
    main(sys.argv[1:])
