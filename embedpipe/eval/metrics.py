"""Information-retrieval metrics with the BEIR / pytrec_eval (trec_eval) definitions.

Inputs
- qrels: ``{query_id: {doc_id: grade}}`` (ids are strings; grades are integers). A document
  is *relevant* when its grade is > 0. Documents absent from a query's qrels count as grade 0
  ("missing qrels" = unjudged = not relevant), exactly as trec_eval treats them.
- run: ``{query_id: {doc_id: score}}`` (or a ranked list of doc ids, taken as already ordered).

Ranking and ties (deterministic): a run given as scores is ranked by score descending, ties
broken by document id in *descending* string order — trec_eval's rule, so our numbers equal
pytrec_eval's on tied scores too. A ranked list is used as given.

Per-query metrics (k is a cut-off on the ranking):
- nDCG@k = DCG@k / IDCG@k with DCG@k = Σ_{i=1..k} grade_i / log2(i + 1) (linear gains, as
  trec_eval's ndcg_cut) and IDCG@k the same sum over the query's qrels grades sorted descending.
- Recall@k = |relevant ∩ top k| / |relevant|.
- MRR@k = 1 / rank of the first relevant document within the top k, 0 if none.

Averaging (BEIR): the mean is over the queries that have at least one relevant document in the
qrels. Queries with no relevant documents (absent from qrels, or only grade ≤ 0 judgments) are
excluded — their metrics are undefined (IDCG = 0, |relevant| = 0). A judged query for which the
run has no results scores 0 (pytrec_eval would skip it; counting it as 0 never flatters a run).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

from embedpipe.errors import EmbedpipeError

Qrels = dict[str, dict[str, int]]
Run = Mapping[str, Mapping[str, float] | Sequence[str]]


class QrelsError(EmbedpipeError):
    """A qrels file is unreadable or malformed."""


def read_qrels(path: str | os.PathLike) -> Qrels:
    """BEIR qrels TSV: ``query-id<TAB>corpus-id<TAB>score`` with an optional header line.

    CRLF and LF line ends are both accepted, blank lines are ignored, a later line for the same
    (query, doc) pair replaces the earlier one. Bad lines raise QrelsError naming file and line.
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise QrelsError(f"{path}: cannot read qrels ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise QrelsError(f"{path}: not UTF-8 ({exc.reason})") from None
    qrels: Qrels = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if lineno == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) != 3:
            raise QrelsError(
                f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(parts)}"
            )
        qid, did, grade = (p.strip() for p in parts)
        try:
            qrels.setdefault(qid, {})[did] = int(grade)
        except ValueError:
            raise QrelsError(f"{path}:{lineno}: score {grade!r} is not an integer") from None
    return qrels


def ranked(results: Mapping[str, float] | Sequence[str]) -> list[str]:
    """Doc ids best first: scores descending, ties by doc id descending (trec_eval)."""
    if isinstance(results, Mapping):
        by_id = sorted(results.items(), key=lambda kv: kv[0], reverse=True)
        return [d for d, _ in sorted(by_id, key=lambda kv: -kv[1])]  # stable: keeps id order
    return list(results)


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    gains = [max(judged.get(d, 0), 0) for d in ranking[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}
DEFAULT_CUTS: tuple[tuple[str, int], ...] = (("ndcg", 10), ("recall", 100), ("mrr", 10))


def per_query(qrels: Qrels, run: Run, cuts: Iterable[tuple[str, int]] = DEFAULT_CUTS) -> dict[str, dict[str, float]]:
    """``{query_id: {"ndcg@10": …, …}}`` for every query with at least one relevant doc."""
    cuts = list(cuts)
    out: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not any(g > 0 for g in judged.values()):
            continue
        ranking = ranked(run.get(qid, ()))
        out[qid] = {f"{name}@{k}": METRICS[name](ranking, judged, k) for name, k in cuts}
    return out


def evaluate(qrels: Qrels, run: Run, cuts: Iterable[tuple[str, int]] = DEFAULT_CUTS) -> dict[str, float]:
    """Mean of each metric over the queries with relevant docs (see module doc), plus
    ``"queries"`` = how many queries the mean is over."""
    cuts = list(cuts)
    scores = per_query(qrels, run, cuts)
    names = [f"{name}@{k}" for name, k in cuts]
    n = len(scores)
    out = {m: (sum(s[m] for s in scores.values()) / n if n else 0.0) for m in names}
    out["queries"] = n
    return out
