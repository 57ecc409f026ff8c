"""The same-run comparisons of `embedpipe bench index` behind the issue's targets: QPS at equal
recall, build wall/CPU time, peak RSS and file size of ours against each reference, and where
the int8 file's bytes go."""

from __future__ import annotations

from typing import Any

from embedpipe.indexes.bench_measure import Row

TARGETS = {"annoy": 0.90, "hnsw": 0.95}


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


def size_summary(rows: list[Row]) -> dict[str, Any] | None:
    """Our int8 vs fp32 HNSW file: the ratio and where the bytes go (vectors vs graph)."""
    by = {r.config.split(" M=")[0]: r for r in rows if r.impl == "embedpipe" and r.config.startswith("hnsw ")}
    if "hnsw fp32" not in by or "hnsw int8" not in by:
        return None
    fp32, int8 = by["hnsw fp32"].size_bytes, by["hnsw int8"].size_bytes
    return {"fp32_bytes": fp32, "int8_bytes": int8, "fp32_over_int8": round(fp32 / int8, 3)}
