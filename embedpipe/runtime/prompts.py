"""Task prompts as data: each model's own convention for `--task query|document|…`.

A `PromptScheme` holds templates; `{task}` becomes the task's label (EmbeddingGemma's model
card names nine) and `{title}` the document title, or `untitled` when a document has none.
Schemes are registered by name; a GGUF records the name of its scheme (`embedpipe.prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class PromptScheme:
    """Templates of one model family; an empty template adds nothing."""

    name: str
    query: str = ""
    document: str = ""
    untitled: str = ""
    #: query-style tasks that take no prompt (symmetric tasks of instruction-on-queries models)
    plain_tasks: frozenset[str] = field(default_factory=frozenset)

    @property
    def takes_titles(self) -> bool:
        """Whether documents' prompts have a title field."""
        return "{title}" in self.document

    def prefix(self, task: str, title: str | None = None) -> str:
        key = canonical_task(task)
        if key == "none" or key in self.plain_tasks:
            return ""
        if key == DOCUMENT_TASK:
            if title and not self.takes_titles:
                raise EmbedpipeError(f"the {self.name!r} prompt convention has no title field; drop the titles")
            return self.document.replace("{title}", title if title else self.untitled)
        return self.query.replace("{task}", QUERY_TASKS[key])

    def prompted_tasks(self) -> list[str]:
        """The tasks that put a prompt before the text under this convention (the others embed
        the text as it is)."""
        return [t for t in TASKS if t != "none" and (self.prefix(t) or (t == DOCUMENT_TASK and self.untitled))]


SCHEMES: dict[str, PromptScheme] = {
    s.name: s
    for s in (
        PromptScheme(
            "embeddinggemma", query="task: {task} | query: ", document="title: {title} | text: ", untitled="none"
        ),
        PromptScheme("e5", query="query: ", document="passage: "),
        PromptScheme(
            "bge-en",
            query="Represent this sentence for searching relevant passages: ",
            plain_tasks=frozenset({"sentence_similarity", "clustering", "classification"}),
        ),
        PromptScheme("none"),
    )
}
DEFAULT_SCHEME = "embeddinggemma"


def scheme(name: str) -> PromptScheme:
    if name not in SCHEMES:
        raise EmbedpipeError(f"unknown prompt convention {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def canonical_task(task: str) -> str:
    """Accepts 'question answering', 'Question-Answering' etc.; raises on an unknown task."""
    if not isinstance(task, str):
        raise EmbedpipeError(f"task must be a string (one of: {', '.join(TASKS)}; 'none' adds no prompt), got {task!r}")
    key = task.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in TASKS:
        raise EmbedpipeError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return key


def prompt_prefix(task: str, title: str | None = None, scheme_name: str = DEFAULT_SCHEME) -> str:
    """The text placed before the input for `task` ('none' adds nothing)."""
    return scheme(scheme_name).prefix(task, title)


def format_texts(
    texts: Sequence[str], task: str, titles: Sequence[str | None] | None = None, scheme_name: str = DEFAULT_SCHEME
) -> list[str]:
    if titles is not None and len(titles) != len(texts):
        raise EmbedpipeError(f"got {len(titles)} titles for {len(texts)} texts")
    if titles is not None and canonical_task(task) != DOCUMENT_TASK:
        raise EmbedpipeError("titles are only used by the 'document' task")
    conv = scheme(scheme_name)
    titles = titles if titles is not None else [None] * len(texts)
    return [conv.prefix(task, title) + text for text, title in zip(texts, titles)]
