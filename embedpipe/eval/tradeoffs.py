"""Recall / size / latency trade-offs over dim × quant × index configuration.

For each (dim, quant, index type, build knobs) one index is built through
`embedpipe.indexes.Builder` and saved to a temp dir (size = bytes on disk, all files); each
query-time knob (annoy search_k, hnsw ef_search) is then swept on that same index. Per row:

- recall@10            top-10 ids vs exact fp32 search at 768 (the full-width question: what
                       does this configuration lose against the best we could do?)
- recall@10_same_dim   top-10 ids vs exact fp32 search at the row's dim (what the index
                       structure and quantization lose, Matryoshka truncation aside)
- size_bytes, build_s  file size and build wall time
- latency_ms_mean/p50/p95  single-query `search_rows(q, 10)` wall time, one query at a time
                       (on a busy machine the mean can exceed p95: a few scheduler stalls)

The exact references are numpy matrix products over the float32 vectors (ties broken by row
number, stable), independent of the index code under test.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from embedpipe.errors import ArgumentError, EmbedpipeError, shape_text
from embedpipe.eval.embedding import CacheOptions, embed_texts, read_query_file, sample_corpus_queries
from embedpipe.indexes import INDEX_TYPES, Builder, VectorIndex
from embedpipe.indexes.base import topk_desc, truncate_normalize
from embedpipe.indexes.quant import STORAGE_TYPES
from embedpipe.indexes.recall import recall_vs_exact
from embedpipe.pipeline.dataset import read_embeddings
from embedpipe.runtime.dims import check_dim, offered_dims
from embedpipe.runtime.recorded_model import open_embedder

DIMS: tuple[int, ...] = (768, 512, 256, 128)
SWEEP_QUANTS: tuple[str, ...] = tuple(STORAGE_TYPES)  # every storage type by default
K = 10


@dataclass(frozen=True)
class Sweep:
    """Build-time knob sets × query-time knob sets of one index type."""

    build: tuple[dict[str, int], ...] = ({},)
    search: tuple[dict[str, int], ...] = ({},)


# The main knobs of each type. annoy search_k=-1 means Annoy's default, k × n_trees nodes.
SWEEPS: dict[str, Sweep] = {
    "brute": Sweep(),
    "annoy": Sweep(build=({"n_trees": 10}, {"n_trees": 50}), search=({"search_k": -1}, {"search_k": 5000})),
    "hnsw": Sweep(build=({"m": 16},), search=({"ef_search": 32}, {"ef_search": 64}, {"ef_search": 128})),
}
KNOBS: tuple[str, ...] = ("n_trees", "search_k", "m", "ef_search")
METRIC_COLUMNS: tuple[str, ...] = (
    "recall@10",
    "recall@10_same_dim",
    "size_bytes",
    "build_s",
    "latency_ms_mean",
    "latency_ms_p50",
    "latency_ms_p95",
)


@dataclass
class Plan:
    dims: tuple[int, ...] | None = None  # None: the DIMS that fit the embeddings, else their width
    quants: tuple[str, ...] = SWEEP_QUANTS
    indexes: tuple[str, ...] = tuple(SWEEPS)
    sweeps: dict[str, Sweep] = field(default_factory=lambda: dict(SWEEPS))
    any_dim: bool = False  # dims need not be the model's Matryoshka widths (`runtime.dims`)

    def validate(self, width: int) -> Plan:
        """Checks that need only the vectors' width (the model's widths are checked by
        `check_model_dims` once the model is known)."""
        if not self.dims:
            self.dims = tuple(d for d in DIMS if d <= width) or (width,)
        for d in self.dims:  # which widths the model offers is checked once it is open
            if not 0 < d <= width:
                raise ArgumentError("dims", f"holds {d}: the stored vectors have {width} components")
        for q in self.quants:
            if q not in STORAGE_TYPES:
                raise EmbedpipeError(f"unknown quant {q!r}; choose from {', '.join(STORAGE_TYPES)}")
        for kind in self.indexes:
            if kind not in SWEEPS or kind not in INDEX_TYPES:
                raise EmbedpipeError(f"unknown index type {kind!r}; choose from {', '.join(SWEEPS)}")
        if not self.configurations():
            raise EmbedpipeError(
                f"no configuration left: none of the index types supports quant(s) {', '.join(self.quants)}"
            )
        return self

    def check_model_dims(self, model_dims: Sequence[int], width: int) -> Plan:
        """Each dim one the model offers for vectors of `width` (or any prefix with `any_dim`)."""
        allowed = offered_dims(model_dims, width)
        self.dims = tuple(check_dim(d, allowed, self.any_dim, name="dims") for d in self.dims or ())
        return self

    def configurations(self) -> list[tuple[int, str, str, dict[str, int]]]:
        """(dim, quant, index type, build knobs) for every index to build; a type is only paired
        with the quants it stores (annoy: fp32; hnsw: fp32, int8; brute: all)."""
        return [
            (d, q, kind, b)
            for d in self.dims
            for kind in self.indexes
            for q in self.quants
            if q in INDEX_TYPES[kind].quants
            for b in self.sweeps[kind].build
        ]

    def searches(self) -> int:
        return sum(len(self.sweeps[kind].search) for _, _, kind, _ in self.configurations())


def exact_topk(vectors: np.ndarray, queries: np.ndarray, dim: int, k: int = K) -> np.ndarray:
    """Rows of the exact top-k by inner product of dim-truncated, re-normalized vectors."""
    x = truncate_normalize(vectors, dim)
    q = truncate_normalize(queries, dim)
    _, rows = topk_desc(q @ x.T, k)
    return rows


def latencies_ms(index: VectorIndex, queries: np.ndarray, k: int = K, **knobs: Any) -> np.ndarray:
    """Wall time of each single-query search, after one warm-up query (JIT, page faults)."""
    index.search_rows(queries[:1], k, **knobs)
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search_rows(queries[i : i + 1], k, **knobs)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def _row(dim: int, quant: str, kind: str, knobs: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"dim": dim, "quant": quant, "index": kind}
    row.update({name: knobs.get(name) for name in KNOBS})
    return row


def run_tradeoffs(
    vectors: np.ndarray,
    queries: np.ndarray,
    plan: Plan | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """One result row per (dim, quant, index, build knobs, search knobs); see module doc."""
    vectors = np.asarray(vectors, np.float32)
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise EmbedpipeError(f"queries are {shape_text(queries.shape)}; the embeddings are {vectors.shape[1]}-d")
    plan = (plan or Plan()).validate(vectors.shape[1])
    k = min(K, len(vectors))
    full = exact_topk(vectors, queries, vectors.shape[1], k)
    same = {d: exact_topk(vectors, queries, d, k) for d in plan.dims}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=plan.searches(), desc="tradeoffs", unit="cfg", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="embedpipe-tradeoffs-") as tmp:
        for n, (dim, quant, kind, build) in enumerate(plan.configurations()):
            bar.set_postfix_str(f"{kind} {quant} d{dim} {build or ''}".strip())
            t0 = time.perf_counter()
            index = Builder(kind, quant=quant, dim=dim, **build).add(vectors).build()
            build_s = time.perf_counter() - t0
            out = Path(tmp) / f"cfg{n}"
            index.save(out)
            size = index.saved_bytes(out)
            for search in plan.sweeps[kind].search:
                _, got = index.search_rows(queries, k, **search)
                lat = latencies_ms(index, queries, k, **search)
                row = _row(dim, quant, kind, {**build, **search})
                row.update(
                    {
                        "recall@10": round(recall_vs_exact(got, full, k), 4),
                        "recall@10_same_dim": round(recall_vs_exact(got, same[dim], k), 4),
                        "size_bytes": size,
                        "build_s": round(build_s, 3),
                        "latency_ms_mean": round(float(lat.mean()), 4),
                        "latency_ms_p50": round(float(np.percentile(lat, 50)), 4),
                        "latency_ms_p95": round(float(np.percentile(lat, 95)), 4),
                    }
                )
                rows.append(row)
                if on_row:
                    on_row(row)
                bar.update(1)
            del index
    bar.close()
    return rows


@dataclass
class TradeoffInputs:
    """Stored vectors and embedded queries of one `eval tradeoffs` run, and where they came from."""

    vectors: np.ndarray
    queries: np.ndarray
    description: str


def inputs_from_dir(
    emb_dir: str | os.PathLike,
    plan: Plan,
    queries_file: str | os.PathLike | None = None,
    n_queries: int = 200,
    seed: int = 0,
    model: str | os.PathLike | None = None,
    cache: CacheOptions | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> TradeoffInputs:
    """The vectors of an ingest output and `n_queries` query vectors: texts from `queries_file`
    (sampled, seeded) or sampled corpus texts, embedded with the query prompt by the model that
    wrote the vectors. Validates `plan` against the vectors' width before any embedding."""
    data = read_embeddings(emb_dir, keep_text=True)
    width = data.vectors.shape[1]
    model_dims = not plan.dims
    plan.validate(width)
    if queries_file is not None:
        texts = read_query_file(queries_file)
        picks = np.random.default_rng(seed).choice(len(texts), min(n_queries, len(texts)), replace=False)
        texts = [texts[i] for i in sorted(picks)]
    else:
        texts = sample_corpus_queries(emb_dir, data.ids, data.columns, n_queries, seed)
    emb = open_embedder(data.meta, model, backend=backend, threads=threads)
    if model_dims:  # the widths this model offers (Matryoshka), not EmbeddingGemma's
        plan.dims = tuple(d for d in emb.dims if d <= width) or (width,)
    else:
        plan.check_model_dims(emb.dims, width)
    queries = embed_texts(emb, texts, "query", cache=cache, dim=width)
    source = f"--queries {queries_file}" if queries_file is not None else "sampled corpus texts"
    return TradeoffInputs(
        data.vectors,
        queries,
        f"{len(data.vectors)} vectors × {width} from {emb_dir}; {len(texts)} queries ({source}), query prompt",
    )


def parse_list(text: str | None, cast: Callable[[str], Any], default: Iterable[Any]) -> tuple:
    """'768,256' -> (768, 256); None -> default. A repeated value is kept once (in first-seen
    order), so a sweep never measures one configuration twice."""
    if not text:
        return tuple(default)
    try:
        return tuple(dict.fromkeys(cast(p.strip()) for p in text.split(",") if p.strip()))
    except ValueError:
        raise EmbedpipeError(f"cannot parse list {text!r}") from None
