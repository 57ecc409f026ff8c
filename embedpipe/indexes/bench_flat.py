"""The rows of `embedpipe bench index` built in this process: our brute (fp32/int16/int8) and
annoy indexes, and Spotify annoy (annoy's search_k swept for both)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedpipe.indexes.bench_measure import SWEEP_SEARCH_K, Row, file_size, measure, timed
from embedpipe.indexes.registry import build_index, load_index


def flat_rows(
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    tmp: Path,
    repeats: int,
    n_single: int,
    report: Callable[[Row], None],
) -> list[Row]:
    rows: list[Row] = []
    configs = [
        ("brute", "fp32", {}),
        ("brute", "int16", {}),
        ("brute", "int8", {"scale_mode": "dim"}),
        ("brute", "int8", {"scale_mode": "vector"}),
        ("annoy", "fp32", {"n_trees": 50}),
    ]
    for kind, quant, params in configs:
        build_s, ix = timed(
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

            row = measure(
                Row("embedpipe", name, knob, build_s, ix.saved_bytes(path)), one, many, q, n_single, truth, repeats
            )
            rows.append(row)
            report(row)
    return rows


def annoy_rows(
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    tmp: Path,
    repeats: int,
    n_single: int,
    report: Callable[[Row], None],
) -> list[Row]:
    import annoy

    def build():
        a = annoy.AnnoyIndex(x.shape[1], "angular")
        a.set_seed(1)
        for i, v in enumerate(x):
            a.add_item(i, v)
        a.build(50, n_jobs=-1)
        return a

    build_s, a = timed(build, 1)
    a.save(str(tmp / "spotify.ann"))
    rows = []
    for s in SWEEP_SEARCH_K:
        row = measure(
            Row("annoy", "spotify annoy fp32 50 trees", f"search_k={s}", build_s, file_size(tmp / "spotify.ann")),
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
