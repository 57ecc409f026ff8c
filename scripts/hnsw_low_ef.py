"""Where HNSW recall@10 at a low ef_search goes: graph-to-graph spread and lost queries.

    python scripts/hnsw_low_ef.py [--n 50000] [--seeds 0,1,2] [--queries 500] [--threads 2]

Builds our HNSW fp32 and hnswlib at M 16, ef_construction 200 on the `bench index` synthetic
vectors once per seed (our ``seed``; hnswlib's ``random_seed`` and a seeded insertion order),
then for each graph prints recall@10 at ef_search 16 and 32 and the number of *lost* queries
(recall exactly 0: none of the true ten found), mean and spread per implementation, and how
far apart the lost sets of two graphs are (Jaccard). For our graphs it also searches with the
numpy reference twice — greedy descent through the upper layers (what both libraries do) and
a beam of 16 on each upper layer — to show whether the lost queries are lost in the descent
or on layer 0.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics

import numpy as np

from embedpipe.indexes.bench_data import exact_top10, synthetic_vectors
from embedpipe.indexes.hnsw import HnswIndex
from embedpipe.indexes.registry import build_index


def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found.tolist(), truth.tolist())])


def ours(base: np.ndarray, seed: int) -> HnswIndex:
    return build_index(base, kind="hnsw", m=16, ef_construction=200, seed=seed)


def hnswlib_graph(base: np.ndarray, seed: int, threads: int):
    import hnswlib

    h = hnswlib.Index(space="ip", dim=base.shape[1])
    h.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=seed)
    order = np.random.default_rng(seed).permutation(len(base))
    h.add_items(base[order], order, num_threads=threads)
    return h


def reference_search(ix: HnswIndex, q: np.ndarray, ef: int, upper_ef: int) -> np.ndarray:
    """The numpy reference search with a beam of `upper_ef` on each upper layer (1 = greedy)."""
    out = np.full((len(q), 10), -1, np.int64)
    top = int(ix.level[ix.entry])
    for i, qi in enumerate(q):
        node = ix.entry
        for layer in range(top, 0, -1):
            node = ix.beam(qi, [node], upper_ef, neighbours=lambda u, layer=layer: ix.upper(u, layer))[0][1]
        found = [v for _, v in ix.beam(qi, [node], max(ef, 10))[:10]]
        out[i, : len(found)] = found
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    os.environ["EMBEDPIPE_THREADS"] = str(a.threads)
    x = synthetic_vectors(a.n + a.queries, 768)
    base, q = np.ascontiguousarray(x[: a.n]), np.ascontiguousarray(x[a.n :])
    truth = exact_top10(base, q)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict[str, list[dict]] = {"ours": [], "hnswlib": []}
    print(f"SYNTHETIC {a.n} x 768, {a.queries} held-out queries, M 16, ef_construction 200")
    for seed in seeds:
        ix = ours(base, seed)
        h = hnswlib_graph(base, seed, a.threads)
        for name, search in (
            ("ours", lambda qq, ef, ix=ix: ix.search_rows(qq, 10, ef_search=ef)[1]),
            ("hnswlib", lambda qq, ef, h=h: (h.set_ef(ef), h.knn_query(qq, 10, num_threads=1)[0])[1]),
        ):
            r16, r32 = per_query_recall(search(q, 16), truth), per_query_recall(search(q, 32), truth)
            row = {"seed": seed, "r16": r16.mean(), "lost16": set(np.flatnonzero(r16 == 0).tolist()), "r32": r32.mean()}
            line = f"{name:8s} seed {seed}: recall@10 ef16 {row['r16']:.4f} ({len(row['lost16'])} lost), ef32 {row['r32']:.4f}"
            if name == "ours":
                greedy = per_query_recall(reference_search(ix, q, 16, 1), truth)
                beam = per_query_recall(reference_search(ix, q, 16, 16), truth)
                line += (
                    f"; reference ef16: greedy upper layers {greedy.mean():.4f} ({(greedy == 0).sum()} lost), "
                    f"beam 16 on upper layers {beam.mean():.4f} ({(beam == 0).sum()} lost)"
                )
            rows[name].append(row)
            print(line, flush=True)
    for name, rs in rows.items():
        r16 = [r["r16"] for r in rs]
        spread = f" ± {statistics.stdev(r16):.4f}" if len(r16) > 1 else ""
        print(f"{name:8s} ef16 mean {statistics.mean(r16):.4f}{spread}, lost {[len(r['lost16']) for r in rs]}")
    graphs = [(f"{n} {r['seed']}", r["lost16"]) for n, rs in rows.items() for r in rs]
    for (na, la), (nb, lb) in itertools.combinations(graphs, 2):
        print(f"lost at ef16, Jaccard {na} / {nb}: {len(la & lb) / max(1, len(la | lb)):.2f}")


if __name__ == "__main__":
    main()
