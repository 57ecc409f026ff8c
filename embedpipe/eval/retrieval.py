"""Retrieval quality on a BEIR-layout dataset: nDCG@10, Recall@100, MRR@10 per dim × index.

Layout: DATASET_DIR/corpus.jsonl ({"_id", "title", "text"} per line), queries.jsonl
({"_id", "text"}), qrels/test.tsv (query-id, corpus-id, score; header line; CRLF tolerated).

Procedure (the same as the sentence-transformers reference in scripts/scifact_reference.py):
documents are embedded once at full width with the document prompt and their titles
("title: {title or none} | text: {text}"; for a model whose prompts have no title field, BEIR's
"{title} {text}"), the queries that appear in the qrels with the query
prompt; both go through `ingest`, so its embedding cache makes a second run fast. Each (dim,
index configuration) then indexes the documents (Matryoshka-truncated) and retrieves the top 100
per query; as in BEIR's EvaluateRetrieval, a hit whose id equals the query id is dropped.

Subsets (for quick runs): --max-queries N keeps the first N judged queries (qrels order);
--max-docs N keeps every document judged for those queries plus the first corpus documents in
file order up to N in total — metrics on a subset are not comparable with full-corpus figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from embedpipe.eval.embedding import CacheOptions, EvalInputError, embed_texts
from embedpipe.eval.metrics import Qrels, evaluate, read_qrels
from embedpipe.eval.tradeoffs import KNOBS
from embedpipe.indexes import INDEX_TYPES, Builder
from embedpipe.jsonl import iter_jsonl
from embedpipe.runtime.prompts import scheme as prompt_scheme

CUTS: tuple[tuple[str, int], ...] = (("ndcg", 10), ("recall", 100), ("mrr", 10))
DEPTH = 100


@dataclass(frozen=True)
class IndexConfig:
    """One index configuration of the retrieval table."""

    index: str
    quant: str = "fp32"
    build: tuple[tuple[str, int], ...] = ()
    search: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        knobs = "".join(f"-{k}{v}" for k, v in self.build + self.search)
        return f"{self.index}-{self.quant}{knobs}"


# --indexes picks from this table by name (or by index type: every config of that type).
INDEX_CONFIGS: tuple[IndexConfig, ...] = (
    IndexConfig("brute", "fp32"),
    IndexConfig("brute", "int8"),
    IndexConfig("annoy", "fp32", (("n_trees", 50),), (("search_k", 10000),)),
    IndexConfig("hnsw", "int8", (("m", 16),), (("ef_search", 128),)),
)
DEFAULT_CONFIGS: tuple[str, ...] = ("brute-fp32", "brute-int8", "hnsw-int8-m16-ef_search128")


def pick_configs(names: tuple[str, ...] | None) -> list[IndexConfig]:
    table = {c.name: c for c in INDEX_CONFIGS}
    out: list[IndexConfig] = []
    for name in names or DEFAULT_CONFIGS:
        matches = [table[name]] if name in table else [c for c in INDEX_CONFIGS if c.index == name]
        if not matches:
            raise EvalInputError(
                f"unknown index configuration {name!r}; choose from "
                f"{', '.join(table)} or a type ({', '.join(INDEX_TYPES)})"
            )
        out.extend(m for m in matches if m not in out)
    return out


@dataclass
class BeirData:
    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: Qrels
    unjudgeable: list[str] = field(default_factory=list)  # judged doc ids absent from the corpus


def _jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise EvalInputError(f"{path}: missing (BEIR layout needs corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    rows = []
    for lineno, row in iter_jsonl(path, EvalInputError):
        if not isinstance(row, dict) or "_id" not in row:
            raise EvalInputError(f'{path}:{lineno}: expected an object with an "_id"')
        rows.append({f: ("" if row.get(f) is None else str(row.get(f))) for f in fields})
    return rows


def load_beir(
    root: str | Path, split: str = "test", max_docs: int | None = None, max_queries: int | None = None
) -> BeirData:
    """The dataset (BEIR layout under ``root``), its queries those with a positive grade in
    ``qrels/<split>.tsv``; ``max_queries``/``max_docs`` (≥ 1) cut it to a subset."""
    for name, value in (("max_docs", max_docs), ("max_queries", max_queries)):
        if value is not None and value < 1:
            raise EvalInputError(f"{name} must be at least 1, not {value}")
    root = Path(root)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise EvalInputError(
            f"{qrels_path}: missing (BEIR layout needs corpus.jsonl, queries.jsonl, qrels/{split}.tsv)"
        )
    qrels = read_qrels(qrels_path)
    queries = {r["_id"]: r["text"] for r in _jsonl(root / "queries.jsonl", ("_id", "text"))}
    judged = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    absent = [q for q in judged if q not in queries]
    if absent:
        raise EvalInputError(f"{root / 'queries.jsonl'}: {len(absent)} judged query id(s) missing, e.g. {absent[0]!r}")
    if not judged:
        raise EvalInputError(f"{qrels_path}: no query has a document graded above 0, so there is nothing to score")
    judged = judged[:max_queries] if max_queries is not None else judged
    qrels = {q: qrels[q] for q in judged}
    corpus = _jsonl(root / "corpus.jsonl", ("_id", "title", "text"))
    present = {r["_id"] for r in corpus}
    unjudgeable = sorted({d for q in judged for d, g in qrels[q].items() if g > 0 and d not in present})
    if max_docs is not None:
        needed = {d for q in judged for d in qrels[q]}
        keep = [r for r in corpus if r["_id"] in needed]
        rest = [r for r in corpus if r["_id"] not in needed]
        corpus = keep + rest[: max(0, max_docs - len(keep))]
    corpus = [r for r in corpus if r["text"].strip() or r["title"].strip()]
    if not corpus:
        raise EvalInputError(f"{root / 'corpus.jsonl'}: no documents")
    return BeirData(
        [r["_id"] for r in corpus],
        [r["title"] for r in corpus],
        [r["text"] for r in corpus],
        judged,
        [queries[q] for q in judged],
        qrels,
        unjudgeable,
    )


def document_inputs(data: BeirData, takes_titles: bool) -> tuple[list[str], list[str] | None]:
    """(texts, titles) to embed the corpus with: the titles in their prompt field where the
    model's prompts have one, else joined before the text as BEIR does ("title text")."""
    if takes_titles:
        return data.texts, data.titles
    return [f"{title} {text}".strip() for title, text in zip(data.titles, data.texts)], None


def run_retrieval(
    data: BeirData,
    emb: Any,
    dims: tuple[int, ...] | None,
    configs: list[IndexConfig],
    cache: CacheOptions | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    any_dim: bool = False,
) -> list[dict[str, Any]]:
    """One row per (dim, config) with ndcg@10, recall@100, mrr@10, queries, docs, timings.
    `dims` (default: the model's Matryoshka widths) are checked like every `dim` (`check_dim`)."""
    from embedpipe.runtime.dims import check_dim

    cache = cache or CacheOptions(progress=progress)
    dims = tuple(check_dim(d, emb.dims, any_dim, "dims") for d in dims) if dims else tuple(emb.dims)
    t0 = time.perf_counter()
    texts, titles = document_inputs(data, prompt_scheme(emb.prompts).takes_titles)
    docs = embed_texts(emb, texts, "document", titles=titles, cache=cache)
    queries = embed_texts(emb, data.queries, "query", cache=cache)
    embed_s = time.perf_counter() - t0
    depth = min(DEPTH + 1, len(data.doc_ids))
    rows = []
    jobs = [(d, c) for d in dims for c in configs]
    for dim, cfg in tqdm(jobs, desc="retrieval", unit="cfg", disable=not progress):
        t1 = time.perf_counter()
        index = Builder(cfg.index, quant=cfg.quant, dim=dim, **dict(cfg.build)).add(docs, data.doc_ids).build()
        build_s = time.perf_counter() - t1
        knobs = dict(cfg.search)
        index.search(queries[:1], depth, **knobs)  # warm-up: kernel compile, BLAS start, page faults
        t2 = time.perf_counter()
        scores, ids = index.search(queries, depth, **knobs)
        search_s = time.perf_counter() - t2
        run = {}
        for qid, s_row, id_row in zip(data.query_ids, scores, ids):
            hits = [
                (d, float(s))
                for d, s in zip(id_row.tolist(), s_row.tolist())
                if d is not None and d != -1 and str(d) != qid
            ]
            run[qid] = dict(hits[:DEPTH])
        res = evaluate(data.qrels, run, CUTS)
        row = {
            "dim": dim,
            "quant": cfg.quant,
            "index": cfg.index,
            "config": cfg.name,
            **{k: dict(cfg.build + cfg.search).get(k) for k in KNOBS},
            **{m: round(res[m], 4) for m in ("ndcg@10", "recall@100", "mrr@10")},
            "queries": res["queries"],
            "docs": len(data.doc_ids),
            "build_s": round(build_s, 3),
            "search_ms_per_query": round(1e3 * search_s / max(1, len(queries)), 3),
            "embed_s": round(embed_s, 2),
        }
        rows.append(row)
        if on_row:
            on_row(row)
    return rows
