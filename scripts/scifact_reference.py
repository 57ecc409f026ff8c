"""SciFact retrieval reference: sentence-transformers fp32 EmbeddingGemma-300M on BEIR SciFact.

This is the yardstick for the README's retrieval target ("nDCG@10 of the Q8_0 model at 768
within 0.3 points of the sentence-transformers fp32 reference"). It needs torch, so it runs in a separate venv,
never in embedpipe's own:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 && /tmp/torchvenv/bin/pip install sentence-transformers
    OMP_NUM_THREADS=1 nice -n 10 /tmp/torchvenv/bin/python scripts/scifact_reference.py \
        --data /work/shared/data/scifact --model /tmp/egemma/model_download \
        --out datasets/scifact_reference.json 2>&1 | tee /tmp/scifact_reference.log

How it is computed:
- Documents: every row of corpus.jsonl, formatted with the model card's document prompt
  "title: {title} | text: {text}" (title "none" when empty), encoded without any further prompt.
- Queries: only the query ids that appear in qrels/test.tsv, with the query prompt
  "task: search result | query: {text}".
- Embeddings: SentenceTransformer(..., device="cpu") in fp32, default max_seq_length (2048),
  normalize_embeddings=True at 768 dims; for 512/256/128 the 768-d vector is truncated and
  re-normalized (what truncate_dim + normalize_embeddings does).
- Search: exact cosine (dot product of unit vectors) over the whole corpus; ties broken by
  document id descending, as trec_eval does. As in BEIR's EvaluateRetrieval, a hit whose
  document id equals the query id is dropped (ignore_identical_ids; the count is recorded).
- Metrics (BEIR / pytrec_eval definitions, averaged over the judged queries):
  nDCG@10 with linear graded gains from the qrels and 1/log2(rank+1) discount, ideal DCG from
  the qrels' own gains; Recall@100 = |relevant in top 100| / |relevant|; MRR@10 = 1/rank of the
  first relevant document in the top 10 (0 if none). "Relevant" means qrels score > 0.

On a shared, oversubscribed machine OMP_NUM_THREADS=1 avoids OpenMP threads spinning at
barriers while their partner is descheduled; on an idle machine leave it unset. Expect about
1.6 M tokens of documents (mean ~305 tokens each), i.e. ~3.2e14 FLOP: hours on two busy cores.

Document embeddings are cached per chunk under --cache (outside the repository) so an
interrupted run resumes. The SciFact data itself is CC BY-NC and is never written to the repo;
only the metrics and file hashes are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

DOC_PROMPT = "title: {title} | text: "
QUERY_PROMPT = "task: search result | query: "
DIMS = (768, 512, 256, 128)
CHUNK = 256
MODEL_FILES = (
    "model.safetensors",
    "tokenizer.model",
    "tokenizer.json",
    "2_Dense/model.safetensors",
    "3_Dense/model.safetensors",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV with a header row; CRLF tolerated."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        lines = [ln.rstrip("\r\n") for ln in f]
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.split("\t")
        if n == 0 and parts[0] == "query-id":
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{n + 1}: expected 3 tab-separated fields, got {parts!r}")
        qid, did, score = parts
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def doc_string(row: dict) -> str:
    title = (row.get("title") or "").strip() or "none"
    return DOC_PROMPT.format(title=title) + (row.get("text") or "")


def encode_cached(model, texts: list[str], cache: Path, label: str, batch_size: int) -> np.ndarray:
    """Encode in chunks of CHUNK fully-prompted texts, each cached as .npy keyed by content hash.

    The texts already carry their prompt, so no prompt is passed to encode() (with
    include_prompt=True pooling this is identical to prompt=...)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    t0 = time.time()
    n_chunks = math.ceil(len(texts) / CHUNK)
    for c in range(n_chunks):
        part = texts[c * CHUNK : (c + 1) * CHUNK]
        key = hashlib.sha256("\x00".join(part).encode()).hexdigest()[:16]
        f = cache / f"{label}_{c:03d}_{key}.npy"
        if f.exists():
            out.append(np.load(f))
            log(f"{label} chunk {c + 1}/{n_chunks}: cached")
            continue
        emb = model.encode(
            part, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        emb = np.asarray(emb, dtype=np.float32)
        np.save(f, emb)
        out.append(emb)
        done = min((c + 1) * CHUNK, len(texts))
        el = time.time() - t0
        log(f"{label} chunk {c + 1}/{n_chunks}: {done}/{len(texts)}, {el:.0f}s elapsed")
    return np.concatenate(out, axis=0)


def truncate(emb: np.ndarray, dim: int) -> np.ndarray:
    e = emb[:, :dim].astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def rank_all(
    q: np.ndarray, d: np.ndarray, doc_ids: list[str], qids: list[str], k: int
) -> tuple[dict[str, list[str]], int]:
    """Top-k doc ids per query by exact cosine; ties by doc id descending (trec_eval order)."""
    scores = q @ d.T
    order_key = np.argsort(np.argsort(np.array(doc_ids, dtype=object)))  # rank of id, ascending
    results: dict[str, list[str]] = {}
    dropped = 0
    for i, qid in enumerate(qids):
        s = scores[i]
        idx = np.lexsort((-order_key, -s))[: k + 1]
        ranked = [doc_ids[j] for j in idx]
        if qid in ranked:
            dropped += 1
            ranked.remove(qid)
        results[qid] = ranked[:k]
    return results, dropped


def ndcg_at(ranked: list[str], rels: dict[str, int], k: int) -> float:
    dcg = sum(rels.get(did, 0) / math.log2(r + 2) for r, did in enumerate(ranked[:k]) if rels.get(did, 0) > 0)
    ideal = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, g in rels.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], rels: dict[str, int], k: int) -> float:
    for r, did in enumerate(ranked[:k]):
        if rels.get(did, 0) > 0:
            return 1.0 / (r + 1)
    return 0.0


def metrics(results: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = list(results)
    return {
        "ndcg@10": float(np.mean([ndcg_at(results[q], qrels[q], 10) for q in qids])),
        "recall@100": float(np.mean([recall_at(results[q], qrels[q], 100) for q in qids])),
        "mrr@10": float(np.mean([mrr_at(results[q], qrels[q], 10) for q in qids])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/scifact")
    ap.add_argument("--model", default="/tmp/egemma/model_download")
    ap.add_argument("--out", default="datasets/scifact_reference.json")
    ap.add_argument("--cache", default="/tmp/scifact_reference_cache")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit-docs", type=int, default=0, help="debug: embed only the first N docs")
    args = ap.parse_args()

    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    data, model_dir = Path(args.data), Path(args.model)
    corpus = read_jsonl(data / "corpus.jsonl")
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(data / "queries.jsonl")}
    qrels = read_qrels(data / "qrels" / "test.tsv")
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise SystemExit(f"qrels/test.tsv names queries absent from queries.jsonl: {missing[:5]}")
    if args.limit_docs:
        corpus = corpus[: args.limit_docs]
    doc_ids = [str(r["_id"]) for r in corpus]
    docs = [doc_string(r) for r in corpus]
    qids = sorted(qrels, key=lambda q: (len(q), q))
    log(f"{len(docs)} docs, {len(qids)} test queries, {sum(len(v) for v in qrels.values())} judgments")

    model = SentenceTransformer(str(model_dir), device="cpu")
    model = model.float().eval()
    log(f"model loaded; max_seq_length={model.max_seq_length}, torch threads={torch.get_num_threads()}")

    t0 = time.time()
    q_emb = encode_cached(
        model, [QUERY_PROMPT + queries[q] for q in qids], Path(args.cache), "queries", args.batch_size
    )
    t_q = time.time() - t0
    log(f"queries encoded in {t_q:.0f}s")
    t0 = time.time()
    d_emb = encode_cached(model, docs, Path(args.cache), "docs", args.batch_size)
    t_d = time.time() - t0
    log(f"docs encoded in {t_d:.0f}s")

    doc_tokens = [len(model.tokenizer(s)["input_ids"]) for s in docs]
    rows = []
    for dim in DIMS:
        res, dropped = rank_all(truncate(q_emb, dim), truncate(d_emb, dim), doc_ids, qids, 100)
        m = metrics(res, qrels)
        rows.append({"dim": dim, **m, "identical_id_hits_dropped": dropped})
        log(f"dim {dim}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()))

    report = {
        "dataset": "BEIR SciFact (test split)",
        "data_files_sha256": {
            name: sha256_file(data / name) for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
        },
        "n_docs": len(docs),
        "n_queries": len(qids),
        "n_judgments": sum(len(v) for v in qrels.values()),
        "doc_tokens": {
            "max": max(doc_tokens),
            "mean": float(np.mean(doc_tokens)),
            "over_2048": int(sum(t > 2048 for t in doc_tokens)),
        },
        "partial": bool(args.limit_docs),
        "model": "google/embeddinggemma-300m (sentence-transformers checkout)",
        "model_files_sha256": {f: sha256_file(model_dir / f) for f in MODEL_FILES if (model_dir / f).exists()},
        "precision": "fp32",
        "device": "cpu",
        "max_seq_length": model.max_seq_length,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "prompts": {"query": QUERY_PROMPT, "document": DOC_PROMPT + "{text}", "empty_title": "none"},
        "method": (
            "exact cosine over L2-normalized embeddings; lower dims = truncate 768-d vector "
            "then re-normalize; ties by doc id descending; hits with doc id == query id "
            "dropped (BEIR ignore_identical_ids)"
        ),
        "metric_definitions": {
            "ndcg@10": "pytrec_eval ndcg_cut_10: linear gains from qrels, 1/log2(rank+1), "
            "ideal DCG from the qrels' gains; mean over judged queries",
            "recall@100": "|relevant in top 100| / |relevant| (qrels score > 0)",
            "mrr@10": "1/rank of first relevant in top 10, else 0",
        },
        "results": rows,
        "timing_s": {"queries": round(t_q, 1), "docs": round(t_d, 1)},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "numpy": np.__version__,
        },
        "command": " ".join(["python", "scripts/scifact_reference.py", *sys.argv[1:]]),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
