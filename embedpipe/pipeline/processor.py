"""One window of rows -> output table: validate, look up the cache, tokenize/chunk the misses,
embed them in length-sorted batches bounded by rows and tokens, and emit rows in input order."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedpipe.errors import ArgumentError, EmbedpipeError, InputTooLongError, shown
from embedpipe.pipeline.batching import length_batches
from embedpipe.pipeline.cache import CachedRow, EmbeddingCache, cache_key
from embedpipe.pipeline.chunking import PROMPT_TOO_LONG, TOO_LONG, Chunker
from embedpipe.pipeline.config import IngestConfig
from embedpipe.pipeline.dataset import embedding_columns
from embedpipe.pipeline.rows import REASONS, Rows, extract

COUNTERS = (
    "rows_in",
    "rows_embedded",
    "output_rows",
    "chunked_rows",
    "truncated_rows",
    "skipped_rows",
    "tokens",
    "text_tokens",
    "cache_hits",
    "sequences_embedded",
)


@dataclass
class Stats:
    """Counters for a window, a part or a whole job (they add up)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    embed_seconds: float = 0.0

    def add(self, other: Stats) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        for k, v in other.skipped_reasons.items():
            self.skipped_reasons[k] = self.skipped_reasons.get(k, 0) + v
        self.embed_seconds += other.embed_seconds

    def to_dict(self) -> dict:
        return {
            **self.counts,
            "skipped_reasons": dict(sorted(self.skipped_reasons.items())),
            "embed_seconds": round(self.embed_seconds, 6),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        s = cls()
        for k in COUNTERS:
            s.counts[k] = int(data.get(k, 0))
        s.skipped_reasons = {k: int(v) for k, v in data.get("skipped_reasons", {}).items()}
        s.embed_seconds = float(data.get("embed_seconds", 0.0))
        return s


class WindowProcessor:
    """Holds the embedder, chunker and cache for a job; `process` handles one window."""

    def __init__(self, emb, cfg: IngestConfig, schema: pa.Schema, cache: EmbeddingCache | None):
        self.emb = emb
        self.cfg = cfg
        self.schema = schema
        self.cache = cache
        self.chunker = Chunker(emb, cfg.task, cfg.max_tokens, cfg.long, cfg.chunk_tokens, cfg.chunk_overlap)
        self.setting = self.chunker.cache_setting
        self.keep_fields = [schema.field(c) for c in cfg.keep]
        self.on_batch: Callable[[int, int, int], None] | None = None  # (seqs done, seqs, tokens)
        self.seen_ids: set = set()  # ids of the good rows so far (--on-duplicate-id)

    def process(self, batches: list[tuple[int, Path, pa.RecordBatch]]) -> tuple[pa.Table, list[dict], Stats]:
        cfg = self.cfg
        rows = extract(batches, cfg.text_col, cfg.id_col, cfg.title_col)
        if cfg.id_col and cfg.on_duplicate_id != "keep":
            self._mark_duplicates(rows)
        stats = Stats()
        stats.counts["rows_in"] = len(rows.texts)
        good = [i for i, r in enumerate(rows.reasons) if r is None]
        results = self._embed_rows(rows, good, stats)
        good = [i for i in good if rows.reasons[i] is None]  # prompt_too_long found while planning
        skipped = self._skipped(rows, stats)
        table = self._table(batches, rows, good, results)
        for i in good:
            r = results[i]
            stats.counts["rows_embedded"] += 1
            stats.counts["output_rows"] += len(r.spans)
            stats.counts["chunked_rows"] += len(r.spans) > 1
            stats.counts["truncated_rows"] += r.truncated
            stats.counts["tokens"] += sum(r.seq_tokens)
            stats.counts["text_tokens"] += r.text_tokens
        return table, skipped, stats

    def _mark_duplicates(self, rows: Rows) -> None:
        """Rows whose id an earlier good row of this job already used: an error, or skipped
        with reason duplicate_id (listed in _skipped.jsonl and counted in the summary)."""
        seen = self.seen_ids
        for i, (row_id, reason) in enumerate(zip(rows.ids, rows.reasons)):
            if reason is not None:
                continue
            if row_id in seen:
                if self.cfg.on_duplicate_id == "error":
                    raise EmbedpipeError(
                        f"{rows.paths[i]}: row {rows.rows[i]}: id {shown(row_id)} appeared in an "
                        "earlier row; use --on-duplicate-id warn (skip) or keep"
                    )
                rows.reasons[i] = "duplicate_id"
            else:
                seen.add(row_id)

    def _skipped(self, rows: Rows, stats: Stats) -> list[dict]:
        out = []
        for i, reason in enumerate(rows.reasons):
            if reason is None:
                continue
            where = f"{rows.paths[i]}: row {rows.rows[i]} (id {shown(rows.ids[i])})"
            if self.cfg.on_bad == "fail" and reason != "duplicate_id":
                raise ArgumentError(
                    "on_bad",
                    f"{where}: {REASONS[reason]} ({reason}); use {{on_bad}} to skip such rows",
                    values={"on_bad": "skip"},
                )
            out.append({"id": rows.ids[i], "row": rows.rows[i], "file": str(rows.paths[i]), "reason": reason})
            stats.skipped_reasons[reason] = stats.skipped_reasons.get(reason, 0) + 1
        stats.counts["skipped_rows"] = len(out)
        return out

    def _embed_rows(self, rows: Rows, good: list[int], stats: Stats) -> dict[int, CachedRow]:
        cfg, emb = self.cfg, self.emb
        titles = rows.titles
        keys: dict[int, bytes] = {}
        results: dict[int, CachedRow] = {}
        if self.cache is not None:
            keys = {
                i: cache_key(
                    emb.model_sha256, cfg.task, cfg.dim, titles[i] if titles else None, rows.texts[i], self.setting
                )
                for i in good
            }
            found = self.cache.get_many(list(keys.values()), cfg.dim)
            results = {i: found[k] for i, k in keys.items() if k in found}
            stats.counts["cache_hits"] = len(results)

        def group(i: int) -> object:
            return keys.get(i, (rows.texts[i], titles[i] if titles else None))

        # identical texts in one window are embedded once
        todo: dict[object, list[int]] = {}
        for i in good:
            if i not in results:
                todo.setdefault(group(i), []).append(i)
        firsts = [group[0] for group in todo.values()]
        plans = self.chunker.plan([rows.texts[i] for i in firsts], [titles[i] for i in firsts] if titles else None)
        seqs: list[list[int]] = []
        owners: list[int] = []
        for i, plan in zip(firsts, plans):
            if plan.error == TOO_LONG:
                raise InputTooLongError(
                    f"{rows.paths[i]}: row {rows.rows[i]} (id {rows.ids[i]!r}) has {plan.text_tokens} text tokens, "
                    f"more than fit in {cfg.max_tokens}; use --long chunk or --long truncate"
                )
            if plan.error == PROMPT_TOO_LONG:
                for j in todo[group(i)]:
                    rows.reasons[j] = PROMPT_TOO_LONG
                continue
            seqs.extend(plan.seqs)
            owners.extend([i] * len(plan.seqs))
        vecs = self._embed(seqs, stats)
        fresh: list[tuple[bytes, str, int, CachedRow]] = []
        at = 0
        for i, plan in zip(firsts, plans):
            if plan.error:
                continue
            n = len(plan.seqs)
            row = CachedRow(
                plan.spans, [len(s) for s in plan.seqs], vecs[at : at + n], plan.text_tokens, plan.truncated
            )
            at += n
            for j in todo[group(i)]:
                results[j] = row
            if i in keys:
                fresh.append((keys[i], emb.model_sha256, cfg.dim, row))
        if self.cache is not None:
            self.cache.put_many(fresh)
        return results

    def _embed(self, seqs: list[list[int]], stats: Stats) -> np.ndarray:
        out = np.empty((len(seqs), self.cfg.dim), np.float32)
        t0 = time.perf_counter()
        done = 0
        for batch in length_batches([len(s) for s in seqs], self.cfg.batch_rows, self.cfg.batch_tokens):
            out[batch] = self.emb.encode_ids(
                [seqs[i] for i in batch], dim=self.cfg.dim, batch_size=len(batch), any_dim=True
            )  # the job checked cfg.dim against the model (and --any-dim) before any work
            done += len(batch)
            if self.on_batch is not None:
                self.on_batch(done, len(seqs), sum(len(seqs[i]) for i in batch))
        stats.embed_seconds += time.perf_counter() - t0
        stats.counts["sequences_embedded"] += len(seqs)
        return out

    def _table(self, batches, rows: Rows, good: list[int], results: dict[int, CachedRow]) -> pa.Table:
        cfg = self.cfg
        per_row = [len(results[i].spans) for i in good]
        total = sum(per_row)
        cols: dict[str, pa.Array] = {
            "id": pa.array(
                [rows.ids[i] for i, n in zip(good, per_row) for _ in range(n)], self.schema.field("id").type
            ),
            "chunk": pa.array([c for n in per_row for c in range(n)], pa.int32()),
            "token_start": pa.array([s for i in good for s, _ in results[i].spans], pa.int32()),
            "token_end": pa.array([e for i in good for _, e in results[i].spans], pa.int32()),
        }
        source_index = np.repeat(np.array(good, dtype=np.int64), per_row)
        for f in self.keep_fields:
            cols[f.name] = self._keep_column(batches, rows, f, source_index)
        vecs = np.concatenate([results[i].vectors for i in good]) if good else np.zeros((0, cfg.dim), np.float32)
        cols.update(embedding_columns(vecs, self.schema, cfg.dtype))
        assert len(cols["embedding"]) == total
        return pa.Table.from_arrays([cols[f.name] for f in self.schema], schema=self.schema)

    def _keep_column(self, batches, rows: Rows, f: pa.Field, source_index: np.ndarray) -> pa.Array:
        if f.name in (self.cfg.text_col, self.cfg.title_col):
            values = rows.texts if f.name == self.cfg.text_col else rows.titles
            return pa.array([values[i] for i in source_index.tolist()], f.type)
        pieces = []
        offset = 0
        for _, path, batch in batches:
            n = batch.num_rows
            local = source_index[(source_index >= offset) & (source_index < offset + n)] - offset
            col = batch.column(f.name).take(pa.array(local, pa.int64()))
            try:
                pieces.append(col.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise EmbedpipeError(
                    f"{path}: column {f.name!r} has type {col.type}, which does not convert to "
                    f"{f.type} as in the first input file ({exc})"
                ) from exc
            offset += n
        return pa.concat_arrays(pieces) if pieces else pa.array([], f.type)
