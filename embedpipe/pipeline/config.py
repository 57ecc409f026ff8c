"""`IngestConfig`: everything an ingest job needs, validated once, plus its resume fingerprint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from embedpipe.errors import ArgumentError, EmbedpipeError

LONG_MODES: tuple[str, ...] = ("chunk", "truncate", "error")
BAD_POLICIES: tuple[str, ...] = ("skip", "fail")
DUPLICATE_POLICIES: tuple[str, ...] = ("warn", "error", "keep")  # warn: skip later rows, listed
DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
ENGINES: tuple[str, ...] = ("local", "ray")

# Fields that change which rows or which vectors a job produces: resuming with a different value
# would mix two different datasets in one directory, so resume refuses (see manifest.py).
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "text_col",
    "id_col",
    "title_col",
    "keep",
    "task",
    "dim",
    "dtype",
    "long",
    "max_tokens",
    "chunk_tokens",
    "chunk_overlap",
    "on_bad",
    "on_duplicate_id",
    "part_rows",
)


@dataclass
class IngestConfig:
    """One ingest job. `inputs` are files, directories or globs; `output` a directory.

    max_tokens: sequence limit (BOS + prompt + text + EOS); None = the model's context.
    chunk_tokens: text tokens per chunk window; None = as many as fit in max_tokens.
    part_rows: input rows per output part file = the unit of resume.
    sort_window: rows tokenized and length-sorted together (bounds memory).
    """

    inputs: list[str]
    output: str
    model: str | None = None
    backend: str = "auto"
    threads: int | None = None
    text_col: str = "text"
    id_col: str | None = None
    title_col: str | None = None
    keep: list[str] = field(default_factory=list)
    task: str = "document"
    dim: int | None = None
    any_dim: bool = False  # allow a dim that is not one of the model's Matryoshka widths
    dtype: str = "float32"
    long: str = "chunk"
    max_tokens: int | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int = 64
    on_bad: str = "skip"
    on_duplicate_id: str = "warn"
    batch_rows: int = 32
    batch_tokens: int = 16384
    sort_window: int = 4096
    part_rows: int = 2000
    read_rows: int = 1024
    cache: bool = True
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    resume: bool = False
    overwrite: bool = False
    engine: str = "local"
    ray_actors: int | None = None
    ray_address: str | None = None
    progress: bool = True

    def validate(self) -> IngestConfig:
        choices = {
            "long": LONG_MODES,
            "on_bad": BAD_POLICIES,
            "on_duplicate_id": DUPLICATE_POLICIES,
            "dtype": DTYPES,
            "engine": ENGINES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EmbedpipeError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = ("batch_rows", "batch_tokens", "sort_window", "part_rows", "read_rows")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ArgumentError(name, f"must be positive, got {getattr(self, name)}")
        if not self.inputs:
            raise EmbedpipeError("no input given")
        if self.chunk_tokens is not None and self.chunk_tokens <= 0:
            raise ArgumentError("chunk_tokens", f"must be positive, got {self.chunk_tokens}")
        if self.chunk_overlap < 0:
            raise ArgumentError("chunk_overlap", f"must be >= 0, got {self.chunk_overlap}")
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:
            raise ArgumentError(
                "chunk_overlap",
                f"({self.chunk_overlap}) must be smaller than {{chunk_tokens}} ({self.chunk_tokens})",
                ("chunk_tokens",),
            )
        if self.resume and self.overwrite:
            raise ArgumentError("resume", "and {overwrite} contradict each other", ("overwrite",))
        from embedpipe.pipeline.dataset import STRUCTURAL_COLUMNS

        clash = set(STRUCTURAL_COLUMNS).intersection(self.keep)
        if clash:
            raise ArgumentError(
                "keep", f"cannot pass through {', '.join(sorted(clash))}: the output uses those column names"
            )
        self.keep = list(dict.fromkeys(self.keep))
        return self

    def source_columns(self) -> list[str]:
        """Input columns to read, in a fixed order."""
        cols = [self.text_col, self.id_col, self.title_col, *self.keep]
        return list(dict.fromkeys(c for c in cols if c))

    def fingerprint(self) -> dict:
        data = asdict(self)
        return {name: data[name] for name in FINGERPRINT_FIELDS}
