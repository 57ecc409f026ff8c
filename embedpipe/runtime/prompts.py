"""Task prompts of the EmbeddingGemma model card, as data.

Query-style tasks prefix `task: {name} | query: `; documents use `title: {title} | text: `
with the literal title "none" when a document has none.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedpipe.errors import EmbedpipeError

DOCUMENT_TASK = "document"

QUERY_TASKS: dict[str, str] = {
    "query": "search result",
    "search_result": "search result",
    "question_answering": "question answering",
    "fact_checking": "fact checking",
    "classification": "classification",
    "clustering": "clustering",
    "sentence_similarity": "sentence similarity",
    "code_retrieval": "code retrieval",
    "summarization": "summarization",
}

TASKS: tuple[str, ...] = (*QUERY_TASKS, DOCUMENT_TASK, "none")


def canonical_task(task: str) -> str:
    """Accepts 'question answering', 'Question-Answering' etc.; raises on an unknown task."""
    key = task.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in TASKS:
        raise EmbedpipeError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return key


def prompt_prefix(task: str, title: str | None = None) -> str:
    """The text placed before the input for `task` ('none' adds nothing)."""
    key = canonical_task(task)
    if key == "none":
        return ""
    if key == DOCUMENT_TASK:
        return f"title: {title if title else 'none'} | text: "
    return f"task: {QUERY_TASKS[key]} | query: "


def format_texts(texts: Sequence[str], task: str, titles: Sequence[str | None] | None = None) -> list[str]:
    if titles is not None and len(titles) != len(texts):
        raise EmbedpipeError(f"got {len(titles)} titles for {len(texts)} texts")
    if titles is not None and canonical_task(task) != DOCUMENT_TASK:
        raise EmbedpipeError("titles are only used by the 'document' task")
    titles = titles if titles is not None else [None] * len(texts)
    return [prompt_prefix(task, title) + text for text, title in zip(texts, titles)]
