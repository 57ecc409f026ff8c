"""The implementations `embedpipe bench runtime` times: embedpipe (JIT, numpy), llama.cpp through
llama-cpp-python (same GGUF, same threads), ONNX Runtime on an export, and sentence-transformers
on torch CPU. Each is loaded in a ``bench_worker`` process of its own (sentence-transformers in
a separate python, since torch is never a dependency of embedpipe), so its CPU time and resident
memory are its own.

Every peer takes prompt-formatted texts, so all of them see the same token sequences.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

from embedpipe.codegen.isa import read_cpu_flags
from embedpipe.errors import EmbedpipeError

if TYPE_CHECKING:
    from types import ModuleType, SimpleNamespace

    from embedpipe.runtime.bench import BenchConfig


class PeerUnavailable(Exception):
    """This peer cannot run here; the message says why (reported as skipped)."""


class Peer:
    """One implementation, loaded in a ``bench_worker`` process; subclasses provide ``encode``."""

    name = "peer"
    # How this peer was set up differently from its defaults, and why (printed when it loads).
    note = ""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def extras(self) -> dict[str, Callable[..., object]]:
        """Measurements only this peer makes, by name (``bench_worker``'s ``extra`` command)."""
        return {}

    def vectors(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.encode(texts), dtype=np.float32)


class EmbedpipePeer(Peer):
    def __init__(self, backend: str, cfg, threads: int):
        super().__init__(threads)
        from embedpipe.runtime.embedder import Embedder

        self.name = backend
        self.embedder = Embedder.load(cfg.model, backend=backend, threads=threads)
        self.batch_size = cfg.batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        # Texts already carry their prompt: task "none" adds nothing.
        return self.embedder.encode(texts, task="none", batch_size=self.batch_size)

    def extras(self) -> dict[str, Callable[..., object]]:
        from embedpipe.runtime import bench_memory, bench_ops
        from embedpipe.runtime.bench import ffn_timing

        embedder = self.embedder
        return {
            "streamed_weight_bytes": lambda: bench_memory.streamed_weight_bytes(embedder.model),
            "native_calls_per_forward": lambda text: bench_memory.native_calls_per_forward(embedder, text),
            "has_ffn": lambda: hasattr(embedder.model.layers[0], "w_gate_up"),
            "ffn": lambda tokens, repeats: ffn_timing(embedder, tokens, repeats),
            "profile_ops": lambda texts, repeats, batch_size: bench_ops.profile_ops(
                embedder, embedder.tokenize(texts, "none"), repeats, batch_size
            ),
        }


class LlamaCppPeer(Peer):
    name = "llama.cpp"

    def __init__(self, cfg, threads: int):
        super().__init__(threads)
        try:
            import llama_cpp
        except ImportError as exc:
            raise PeerUnavailable(
                f"llama-cpp-python is not importable ({exc}); pip install 'embedpipe[bench]'"
            ) from None
        try:
            # Non-causal embedding needs a whole sequence in one ubatch; a larger ubatch than
            # that only adds masked attention work (llama.cpp attends over the whole ubatch).
            n_ctx = llama_context_size(cfg.max_tokens)
            with extra_buffer_types(llama_cpp) as self.note:
                self.llm = llama_cpp.Llama(
                    model_path=str(cfg.model),
                    embedding=True,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=n_ctx,
                    verbose=False,
                )
        except Exception as exc:  # llama.cpp rejects the file (e.g. an architecture it lacks)
            raise PeerUnavailable(f"llama.cpp cannot load {cfg.model}: {exc}") from None

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.llm.embed(texts), dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


AMX_FLAG = "amx_int8"


@contextmanager
def extra_buffer_types(llama_cpp: ModuleType, enabled: bool | None = None) -> Iterator[str]:
    """Load a ``llama_cpp.Llama`` with llama.cpp's extra weight buffer types (AMX, CPU repack)
    on or off (default: off where the CPU has AMX); yields the peer's note.

    On AMX hosts they are off: llama.cpp's AMX matmul segfaults in its first forward on some
    Sapphire Rapids-class machines (ggml-org/llama.cpp#20824, open), this VM among them, and a
    crashed peer measures nothing. llama-cpp-python has no argument for the model parameter,
    so its default-parameter function is wrapped while the model loads.
    """
    if enabled is None:
        enabled = AMX_FLAG not in read_cpu_flags()
    lowlevel = llama_cpp.llama_cpp
    default = lowlevel.llama_model_default_params
    if enabled or not hasattr(default(), "use_extra_bufts"):
        yield ""
        return

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    lowlevel.llama_model_default_params = without_extra_buffers
    try:
        yield "extra buffer types (AMX, repack) off: its AMX matmul segfaults on this host (llama.cpp#20824)"
    finally:
        lowlevel.llama_model_default_params = default


def llama_context_size(longest: int) -> int:
    """The smallest power of two >= the longest document (at least 512)."""
    size = 512
    while size < longest:
        size *= 2
    return size


class SentenceTransformersPeer(Peer):
    """sentence-transformers fp32 on torch CPU. Torch is never an embedpipe dependency, so this
    peer's worker runs in ``cfg.st_python`` (``bench_worker`` loads the model there); here
    only what can be checked before starting it."""

    name = "sentence-transformers"

    def __init__(self, cfg, threads: int):
        super().__init__(threads)
        self.python = cfg.st_python or os.environ.get("EMBEDPIPE_ST_PYTHON")
        if not self.python:
            raise PeerUnavailable("no python with sentence-transformers given (--st-python or $EMBEDPIPE_ST_PYTHON)")
        if not os.access(self.python, os.X_OK):
            raise PeerUnavailable(f"{self.python} is not an executable python")
        if not cfg.st_model:
            raise PeerUnavailable("no sentence-transformers checkout of the model (--st-model)")


class OnnxRuntimePeer(Peer):
    """ONNX Runtime on an export made by scripts/export_onnx.py, fp32 or dynamic int8, with
    token ids from the GGUF's tokenizer (identical to the checkout's). A transformer-body
    export (BERT family: last_hidden_state) is pooled here, mean or CLS as the GGUF says; a
    whole-pipeline export (EmbeddingGemma: pooling and Dense projections in the graph) gives
    the sentence vector. Both are L2-normalized."""

    FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}

    def __init__(self, variant: str, cfg, threads: int):
        super().__init__(threads)
        self.name = f"onnxruntime-{variant}"
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise PeerUnavailable(f"onnxruntime is not importable ({exc})") from None
        path = onnx_dir(cfg) / self.FILES[variant]
        if not path.is_file():
            raise PeerUnavailable(f"{path} is missing; make it with scripts/export_onnx.py")
        from embedpipe.runtime.gguf_file import GGUFModelFile
        from embedpipe.runtime.registry import resolve_model
        from embedpipe.runtime.tokenizer import load_tokenizer

        mf = GGUFModelFile(resolve_model(cfg.model))
        self.tokenizer, self.batch_size = load_tokenizer(mf), cfg.batch_size
        self.cls_pooling = int(mf.get(f"{mf.architecture}.pooling_type", 1)) == int(gguf.PoolingType.CLS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Batches of texts of similar length (sorted, as sentence-transformers and embedpipe
        batch them), each padded to its longest; vectors in input order."""
        ids = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = []
        for a in range(0, len(ids), self.batch_size):
            chunk = [ids[i] for i in order[a : a + self.batch_size]]
            width = max(len(s) for s in chunk)
            input_ids = np.zeros((len(chunk), width), np.int64)
            mask = np.zeros((len(chunk), width), np.int64)
            for i, seq in enumerate(chunk):
                input_ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
            hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
            if hidden.ndim == 2:  # the export pools and projects: a sentence vector per row
                pooled = hidden
            elif self.cls_pooling:
                pooled = hidden[:, 0]
            else:
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        vectors = np.empty((len(ids), out[0].shape[1]), np.float32)
        vectors[order] = np.concatenate(out)
        return vectors


def onnx_dir(cfg: BenchConfig | SimpleNamespace) -> Path:
    """Where the ONNX exports live: cfg.onnx_dir, else onnx/ beside the GGUF."""
    return Path(getattr(cfg, "onnx_dir", None) or Path(str(cfg.model)).parent / "onnx")


PEER_FACTORIES: dict[str, Callable[[object, int], Peer]] = {
    "jit": lambda cfg, threads: EmbedpipePeer("jit", cfg, threads),
    "numpy": lambda cfg, threads: EmbedpipePeer("numpy", cfg, threads),
    "llama.cpp": LlamaCppPeer,
    "sentence-transformers": SentenceTransformersPeer,
    "onnxruntime-fp32": lambda cfg, threads: OnnxRuntimePeer("fp32", cfg, threads),
    "onnxruntime-int8": lambda cfg, threads: OnnxRuntimePeer("int8", cfg, threads),
}


def check_peer_names(names: Iterable[str], known: Iterable[str] = PEER_FACTORIES) -> None:
    """A mistyped peer is an error; a known peer that cannot run here is skipped later, with
    its reason. `known`: the peers of this benchmark (`bench serve` passes its servers)."""
    known = tuple(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EmbedpipeError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(known)}")


def make_peer(name: str, cfg: BenchConfig | SimpleNamespace, threads: int) -> Peer:
    if name not in PEER_FACTORIES:
        raise PeerUnavailable(f"unknown peer {name!r}; known: {', '.join(PEER_FACTORIES)}")
    return PEER_FACTORIES[name](cfg, threads)
