"""`Embedder`: the Python API for turning texts into sentence vectors.

    emb = Embedder.load()                      # cached default EmbeddingGemma Q8_0
    vecs = emb.encode(["a query"], task="query", dim=256)

Close in spirit to sentence-transformers' `encode`: prompts by task name, batches, L2-normalized
float32 rows, Matryoshka truncation (truncate, then re-normalize).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedpipe.errors import ArgumentError, EmbedpipeError, InputTooLongError, ModelFileError
from embedpipe.runtime import allocator, prompts
from embedpipe.runtime.bert_names import KEY_MAX_SEQ, KEY_POSITION_OFFSET, KEY_PROMPTS
from embedpipe.runtime.dims import check_dim
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.model_integrity import check_finite
from embedpipe.runtime.text_ids import check_texts, fit_context, text_list
from embedpipe.runtime.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

#: general.architecture -> model class (token ids in, pooled vectors out) as "module:Class",
#: imported when a file of that architecture is opened: a start-up pays only its own, and
#: only after the tokenizer has started loading beside it.
ARCHITECTURES: dict[str, type | str] = {
    "gemma-embedding": "embedpipe.runtime.gemma_embedding:GemmaEmbeddingModel",
    "bert": "embedpipe.runtime.bert:BertEncoderModel",
    "mpnet": "embedpipe.runtime.bert:BertEncoderModel",
}


def architecture_class(arch: str) -> type | None:
    """The model class registered for ``arch`` (imported on first use), or None."""
    entry = ARCHITECTURES.get(arch)
    if isinstance(entry, str):
        import importlib

        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


#: Prompt convention of a file that does not name one (`embedpipe.prompts`).
DEFAULT_PROMPTS: dict[str, str] = {"gemma-embedding": "embeddinggemma"}
# A batch holds at most this many tokens (all rows together), so long inputs do not blow up
# memory: attention for one 2048-token text already needs ~50 MB of scores.
DEFAULT_MAX_BATCH_TOKENS = 16384
# ``encode``/``encode_ids`` run passes of at most this many tokens (one longer text runs alone):
# every per-pass activation (up to 2048 rows × 4096 floats) then stays below the allocator's
# mmap ceiling and is recycled between layers (``allocator``) instead of arriving as fresh,
# page-faulted memory; attention is per text, so smaller passes cost nothing else.
PASS_TOKENS = 2048


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


def truncate_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: keep the first `dim` components and re-normalize."""
    if dim > x.shape[1] or dim <= 0:
        raise EmbedpipeError(f"dim {dim} is not in 1..{x.shape[1]}")
    return normalize_rows(np.ascontiguousarray(x[:, :dim]))


def prompt_convention(model_file: GGUFModelFile) -> str:
    """Name of the file's prompt convention (checked to be known)."""
    name = str(model_file.get(KEY_PROMPTS, DEFAULT_PROMPTS.get(model_file.architecture, "none")))
    prompts.scheme(name)
    return name


def max_tokens_of(model_file: GGUFModelFile) -> int:
    """The longest sequence the file's model takes: sentence-transformers' max_seq_length when
    recorded (`embedpipe.max_seq_length`), else its positions (context length)."""
    positions = int(model_file.require(f"{model_file.architecture}.context_length"))
    return int(model_file.get(KEY_MAX_SEQ, positions - int(model_file.get(KEY_POSITION_OFFSET, 0))))


class Embedder:
    """A loaded GGUF embedding model with its tokenizer and a matmul backend; the model class
    is chosen by the file's `general.architecture`."""

    def __init__(self, model_file: GGUFModelFile, backend: str = "auto", threads: int | None = None):
        self.model_file = model_file
        self.model_path = str(model_file.path)
        arch = model_file.architecture
        if arch not in ARCHITECTURES:
            raise ModelFileError(
                f"{model_file.path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
            )
        self.prompts = prompt_convention(model_file)
        # The tokenizer (SentencePiece parsing 262k pieces, GIL released) loads while the
        # model code is imported and the weights are mapped or repacked: together they are
        # most of a warm start.
        with ThreadPoolExecutor(1, thread_name_prefix="embedpipe-tokenizer") as pool:
            tokenizer = pool.submit(load_tokenizer, model_file)
            from embedpipe.runtime.backends import make_backend

            model_class = architecture_class(arch)
            self.backend = make_backend(backend, threads)
            use_cache = getattr(self.backend, "use_weight_cache", None)
            if use_cache is not None:  # repacked weights mapped from disk instead of repacked
                use_cache(model_file)
            self.model = model_class(model_file, self.backend)
            if use_cache is not None:
                self.backend.commit_weight_cache()
            self.tokenizer = tokenizer.result()
        self.max_tokens = self.model.max_tokens
        self.dim = self.model.out_dim
        self.dims = self.model.dims
        self.bos_id = self.tokenizer.special.bos
        self.eos_id = self.tokenizer.special.eos
        self._sha256: str | None = None

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, backend: str = "auto", threads: int | None = None
    ) -> Embedder:
        """Load `path`: a GGUF file, a registered model name (`all-minilm-l6-v2`, `name:f32`),
        or the default model when None (registered models are pulled on first use)."""
        from embedpipe.runtime.registry import resolve_model

        return cls(GGUFModelFile(resolve_model(path)), backend=backend, threads=threads)

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self.model_file.sha256()
        return self._sha256

    def remember_sha256(self, sha256: str) -> None:
        """Take the model file's SHA-256 from a caller that just checked it (no second hash)."""
        self._sha256 = sha256

    def format_texts(
        self, texts: Sequence[str], task: str = "query", titles: Sequence[str | None] | None = None
    ) -> list[str]:
        return prompts.format_texts(texts, task, titles, self.prompts)

    def tokenize(
        self,
        texts: Sequence[str],
        task: str = "none",
        titles: Sequence[str | None] | None = None,
        truncate: bool = False,
    ) -> list[list[int]]:
        """Token ids (with BOS/EOS) of the prompted texts; too-long inputs raise unless `truncate`."""
        check_texts(texts)
        ids = self.tokenizer.encode_batch(self.format_texts(texts, task, titles))
        return fit_context(ids, self.max_tokens, truncate, self.tokenizer.special.add_eos)

    def encode(
        self,
        texts: Sequence[str],
        task: str = "query",
        titles: Sequence[str | None] | None = None,
        dim: int | None = None,
        batch_size: int = 32,
        truncate: bool = False,
        show_progress: bool = False,
        any_dim: bool = False,
    ) -> np.ndarray:
        """L2-normalized (n, dim) float32 embeddings in input order (dim None: the model's full width;
        otherwise one of the model's Matryoshka `dims`, or any width up to it with `any_dim`)."""
        texts = text_list(texts, "encode")
        return self.encode_ids(
            self.tokenize(texts, task, titles, truncate),
            dim=dim,
            batch_size=batch_size,
            show_progress=show_progress,
            any_dim=any_dim,
        )

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        dim: int | None = None,
        batch_size: int = 32,
        show_progress: bool = False,
        max_batch_tokens: int = PASS_TOKENS,
        any_dim: bool = False,
    ) -> np.ndarray:
        """Embed token sequences that already carry BOS/EOS and the prompt."""
        if batch_size < 1:
            raise ArgumentError("batch_size", f"must be positive, got {batch_size}")
        dim = check_dim(dim, self.dims, any_dim)
        out = np.empty((len(ids), self.dim), np.float32)
        if not len(ids):
            return out[:, :dim]
        for i, seq in enumerate(ids):
            if len(seq) == 0:
                raise EmbedpipeError(f"sequence {i} has no tokens")
            if len(seq) > self.max_tokens:
                raise InputTooLongError(
                    f"sequence {i} has {len(seq)} tokens, more than the context of {self.max_tokens}"
                )
        allocator.keep_freed_memory()
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        bar = _progress(len(ids), show_progress)
        for batch in _batches(order, [len(s) for s in ids], batch_size, max_batch_tokens):
            out[batch] = self.model.embed([list(ids[i]) for i in batch])
            check_finite(out[batch], self.model_path)
            bar.update(len(batch))
        bar.close()
        out = normalize_rows(out)
        return out if dim == self.dim else truncate_dim(out, dim)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool):
    """A tqdm bar when shown (tqdm.auto imports asyncio: not paid by a one-text query)."""
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="embedding", unit="text")


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int):
    """Group length-sorted indices into batches bounded by rows and by total tokens."""
    batch: list[int] = []
    tokens = 0
    for i in order:
        if batch and (len(batch) >= batch_size or tokens + lengths[i] > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += lengths[i]
    if batch:
        yield batch
