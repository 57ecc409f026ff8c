"""sentence-transformers fp32 figures on the SciFact *subset* that `embedpipe eval retrieval
--max-docs N` evaluates — for when the full-corpus run does not fit in the time available.

Same subset rule as embedpipe.eval.retrieval.load_beir: the judged test queries (qrels order),
every document judged for them, then the first other corpus documents in file order up to N.
Same prompts, exact cosine search, identical-id filtering and metric code
(embedpipe.eval.metrics, imported from this checkout: it needs only numpy).
Runs in the torch venv, never in embedpipe's own (see scripts/scifact_reference.py):

    PYTHONPATH=. nice /tmp/torchvenv/bin/python scripts/scifact_subset_reference.py \
        --data /work/shared/data/scifact --max-docs 512 --out /tmp/scifact_subset_ref.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from embedpipe.eval.metrics import evaluate, read_qrels

DOC_PROMPT = "title: {title} | text: "
QUERY_PROMPT = "task: search result | query: "
DIMS = (768, 512, 256, 128)


def subset(root: Path, max_docs: int) -> tuple[list[dict], list[str], list[str], dict]:
    qrels = read_qrels(root / "qrels" / "test.tsv")
    queries = {}
    with open(root / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                queries[str(r["_id"])] = str(r.get("text") or "")
    judged = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    qrels = {q: qrels[q] for q in judged}
    with open(root / "corpus.jsonl", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    corpus = [
        {"_id": str(r["_id"]), "title": str(r.get("title") or ""), "text": str(r.get("text") or "")} for r in corpus
    ]
    needed = {d for q in judged for d in qrels[q]}
    keep = [r for r in corpus if r["_id"] in needed]
    rest = [r for r in corpus if r["_id"] not in needed]
    docs = [r for r in keep + rest[: max(0, max_docs - len(keep))] if r["text"].strip() or r["title"].strip()]
    return docs, judged, [queries[q] for q in judged], qrels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/scifact"))
    ap.add_argument("--model", default="/tmp/egemma/model_download")
    ap.add_argument("--max-docs", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("/tmp/scifact_subset_ref.json"))
    ap.add_argument(
        "--save",
        type=Path,
        default=Path("/tmp/scifact_subset_ref.npz"),
        help="vectors + ids (outside the repo), so smaller --max-docs prefixes can be re-scored",
    )
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    docs, qids, qtexts, qrels = subset(args.data, args.max_docs)
    model = SentenceTransformer(args.model, device="cpu")
    t0 = time.time()
    dtexts = [
        DOC_PROMPT.format(title=r["title"] if r["title"] else "none") + (r["text"] if r["text"].strip() else r["title"])
        for r in docs
    ]
    d = model.encode(dtexts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    q = model.encode(
        [QUERY_PROMPT + t for t in qtexts], batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    ids = [r["_id"] for r in docs]
    np.savez(args.save, docs=d, queries=q, doc_ids=np.array(ids), query_ids=np.array(qids))
    out = {
        "max_docs": args.max_docs,
        "docs": len(docs),
        "queries": len(qids),
        "encode_s": round(time.time() - t0, 1),
        "metrics": {},
    }
    for dim in DIMS:
        dd = d[:, :dim] / np.linalg.norm(d[:, :dim], axis=1, keepdims=True)
        qq = q[:, :dim] / np.linalg.norm(q[:, :dim], axis=1, keepdims=True)
        scores = qq @ dd.T
        run = {qid: {i: float(s) for i, s in zip(ids, row) if i != qid} for qid, row in zip(qids, scores)}
        out["metrics"][str(dim)] = {k: round(v, 4) for k, v in evaluate(qrels, run).items()}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
