"""Tokenize prompted texts and cut long ones into token windows.

A text that fits is tokenized exactly as `Embedder.encode` does (prompt + text, BOS/EOS), so its
vector matches `encode`. A long text's tokens split into [specials][prompt][text][specials]; a
chunk is `head + prompt + text[start:end] + tail`, so chunk 0 of a chunked text equals the
truncated text. Spans (token_start, token_end) index the text's own tokens.

"Long" means: more tokens than max_tokens, or (with an explicit chunk_tokens and --long chunk)
more text tokens than chunk_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

TOO_LONG = "too_long"
PROMPT_TOO_LONG = "prompt_too_long"


@dataclass
class RowPlan:
    """The sequences one input row becomes: one per chunk, with their text-token spans."""

    spans: list[tuple[int, int]] = field(default_factory=list)
    seqs: list[list[int]] = field(default_factory=list)
    text_tokens: int = 0
    truncated: bool = False
    error: str | None = None  # TOO_LONG (with --long error) or PROMPT_TOO_LONG

    @property
    def chunked(self) -> bool:
        return len(self.seqs) > 1


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Chunker:
    """Turns texts into RowPlans for one (embedder, task, limits) setting."""

    def __init__(self, emb, task: str, max_tokens: int, long: str, chunk_tokens: int | None, overlap: int):
        self.emb = emb
        self.tok = emb.tokenizer
        self.task = task
        self.max_tokens = max_tokens
        self.long = long
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        probe, bare = self.tok.encode("a", add_special=True), self.tok.encode("a", add_special=False)
        k = next(i for i in range(len(probe) - len(bare) + 1) if probe[i : i + len(bare)] == bare)
        self.head, self.tail = list(probe[:k]), list(probe[k + len(bare) :])
        self._prompts: dict[str | None, list[int]] = {}
        encode_batch = getattr(self.tok, "encode_batch", None)
        self._encode_batch = encode_batch or (lambda texts: [self.tok.encode(t) for t in texts])

    @property
    def cache_setting(self) -> str:
        """The part of an embedding-cache key that names this chunking setting."""
        return f"{self.long}/{self.max_tokens}/{self.chunk_tokens}/{self.overlap}"

    def _prompt_ids(self, title: str | None) -> list[int]:
        ids = self._prompts.get(title)
        if ids is None:
            prefix = self.emb.format_texts([""], self.task, None if title is None else [title])[0]
            ids = self.tok.encode(prefix, add_special=False)
            if len(self._prompts) > 4096:
                self._prompts.clear()
            self._prompts[title] = ids
        return ids

    def plan(self, texts: list[str], titles: list[str | None] | None) -> list[RowPlan]:
        formatted = self.emb.format_texts(texts, self.task, titles)
        full = self._encode_batch(formatted)
        titles = titles if titles is not None else [None] * len(texts)
        return [self._plan_one(ids, title) for ids, title in zip(full, titles)]

    def _plan_one(self, ids: list[int], title: str | None) -> RowPlan:
        h, t = len(self.head), len(self.tail)
        body = ids[h : len(ids) - t]
        p = _common_prefix(body, self._prompt_ids(title))
        n_text = len(body) - p
        fits = len(ids) <= self.max_tokens
        if fits and (self.long != "chunk" or self.chunk_tokens is None or n_text <= self.chunk_tokens):
            return RowPlan([(0, n_text)], [ids], n_text)
        room = self.max_tokens - h - t - p
        if room <= 0:
            return RowPlan(text_tokens=n_text, error=PROMPT_TOO_LONG)
        if self.long == "error" and not fits:
            return RowPlan(text_tokens=n_text, error=TOO_LONG)
        prefix, text = ids[: h + p], body[p:]
        if self.long == "truncate":
            return RowPlan([(0, room)], [prefix + text[:room] + self.tail], n_text, truncated=True)
        window = min(self.chunk_tokens or room, room)
        step = window - min(self.overlap, window // 2)  # overlap capped at half a window
        plan = RowPlan(text_tokens=n_text)
        start = 0
        while True:
            end = min(start + window, n_text)
            plan.spans.append((start, end))
            plan.seqs.append(prefix + text[start:end] + self.tail)
            if end >= n_text:
                return plan
            start += step
