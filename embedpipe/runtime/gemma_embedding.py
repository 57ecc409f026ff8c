"""The `gemma-embedding` architecture (EmbeddingGemma): layers, forward pass, recorded passes
(hyper-parameters and the tensor table: ``gemma_config``).

Sequences are packed: every weight matmul runs once over all tokens of a batch with no padding
rows; only attention, which mixes tokens, runs per sequence.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.quant_formats import FORMATS
from embedpipe.codegen.sequences import Sequences
from embedpipe.errors import ModelFileError
from embedpipe.runtime import ops
from embedpipe.runtime.arena import Arena, ArenaPool
from embedpipe.runtime.backends import Backend, NumpyBackend, dequantize, dequantize_rows, read_vector
from embedpipe.runtime.gemma_config import ARCH, MATRYOSHKA_DIMS, GemmaEmbeddingConfig, validate_tensors
from embedpipe.runtime.gguf_file import DerivedTensor, GGUFModelFile, WeightTensor
from embedpipe.runtime.step_programs import (
    MAX_PROGRAMS,
    PROGRAM_MAX_TOKENS,
    BucketedPasses,
    BucketReplay,
    ProgramCache,
    RecordedPass,
    pad_to_bucket,
)

log = logging.getLogger(__name__)

# Batches of at most PROGRAM_MAX_TOKENS tokens run the layer stack as one recorded step
# program (``runtime.step_programs``: one native call instead of six driver calls and forks
# per layer), kept per sequence-length tuple, the least recently used dropped beyond
# MAX_PROGRAMS or ``step_programs.MAX_PROGRAM_BYTES``. Longer batches replay the program of
# their token-count bucket (``BucketedPasses``), each layer's attention called between its
# recorded steps.
OPS_PER_LAYER = 6


class _Layer:
    def __init__(self, mf: GGUFModelFile, il: int, backend: Backend):
        t = lambda name: mf.tensors[f"blk.{il}.{name}.weight"]  # noqa: E731
        vec = lambda name: read_vector(mf, f"blk.{il}.{name}.weight")  # noqa: E731
        self.attn_norm, self.q_norm, self.k_norm = vec("attn_norm"), vec("attn_q_norm"), vec("attn_k_norm")
        self.q_norm_scaled = self.q_norm * np.float32(1.0 / math.sqrt(self.q_norm.shape[0]))
        self.post_attn_norm, self.ffn_norm, self.post_ffw_norm = (
            vec("post_attention_norm"),
            vec("ffn_norm"),
            vec("post_ffw_norm"),
        )
        # Products that share an input run as one: Q|K|V and gate|up (one activation
        # quantization and one thread fork instead of three and two).
        self.w_qkv = backend.prepare(fuse_rows(f"blk.{il}.attn_qkv", [t("attn_q"), t("attn_k"), t("attn_v")]))
        self.wo = backend.prepare(t("attn_output"))
        self.w_gate_up = backend.prepare(fuse_rows(f"blk.{il}.ffn_gate_up", [t("ffn_gate"), t("ffn_up")]))
        self.w_down = backend.prepare(t("ffn_down"))


def fuse_rows(name: str, tensors: list[WeightTensor]) -> DerivedTensor:
    """One weight whose rows are those of ``tensors`` in order (same type and row length):
    X·[A;B]ᵀ = [X·Aᵀ | X·Bᵀ]. The concatenated copy is only made if a backend reads it (a
    weight-cache hit does not)."""
    first = tensors[0]
    if any(t.qtype != first.qtype or t.shape[1:] != first.shape[1:] for t in tensors):
        raise ModelFileError(f"cannot fuse {', '.join(t.name for t in tensors)}: types or row lengths differ")
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    return DerivedTensor(name, first.qtype, shape, lambda: np.concatenate([t.rows() for t in tensors]).reshape(-1))


def dense_head(mf: GGUFModelFile) -> DerivedTensor:
    """The dense head (dense_2: hidden → 3072, dense_3: 3072 → hidden; no bias, identity
    activation) as its one linear map ``dense_3 · dense_2``, an fp32 (hidden, hidden) weight:
    the same vectors from a quarter of the multiply-adds, and half the bytes the two layers'
    int8 codes had to stream for every text.  The product is taken in float64 from the exact
    dequantized layers (when the weight cache does not already hold it)."""
    w2, w3 = mf.tensors["dense_2.weight"], mf.tensors["dense_3.weight"]

    def build() -> np.ndarray:
        a, b = (_exact_fp32(t).astype(np.float64) for t in (w3, w2))
        return np.ascontiguousarray(a @ b, dtype=np.float32).reshape(-1).view(np.uint8)

    return DerivedTensor("dense_head", GGMLQuantizationType.F32, (w3.shape[0], w2.shape[1]), build)


def _exact_fp32(t: WeightTensor) -> np.ndarray:
    """A weight as fp32 by its format's own dequantizer (gguf's for a format we do not pack)."""
    fmt = FORMATS.get(t.qtype)
    return dequantize(t) if fmt is None else fmt.dequantize(t.rows(), *t.shape)


class GemmaEmbeddingModel:
    """Token ids in, pooled and projected sentence vectors out (before L2 normalization)."""

    def __init__(self, mf: GGUFModelFile, backend: Backend):
        self.cfg = GemmaEmbeddingConfig.from_gguf(mf)
        self.has_dense = validate_tensors(mf, self.cfg)
        if not self.has_dense:
            log.warning(
                "%s has no dense_2/dense_3 head (%d tensors): embeddings will differ from the "
                "sentence-transformers model; convert from a checkout that includes 2_Dense/3_Dense",
                mf.path,
                len(mf.tensors),
            )
        self.backend = backend
        self.ops = ops.ops_for(backend)
        self.token_embd: WeightTensor = mf.tensors["token_embd.weight"]
        self.output_norm = read_vector(mf, "output_norm.weight")
        # Repacking weights is numpy work that drops the GIL: spread it over the backend's threads.
        with ThreadPoolExecutor(max(1, getattr(self.ops, "threads", 1)), thread_name_prefix="embedpipe-load") as pool:
            self.layers = list(pool.map(lambda il: _Layer(mf, il, backend), range(self.cfg.n_layers)))
        # The dense head multiplies one pooled row per text, so its cost is negligible, and its
        # activation-quantization error is not averaged away by pooling: on the golden set an
        # int8-activation head cost more accuracy (min cosine 0.99914 -> 0.99940 with fp32
        # activations) than all 168 layer matmuls together.  It always runs on fp32 activations,
        # on a kernel whose per-row arithmetic does not depend on the batch size.
        head = getattr(backend, "prepare_fp32", NumpyBackend(getattr(backend, "threads", None)).prepare)
        self.dense = [head(dense_head(mf))] if self.has_dense else []
        self.rope = {
            theta: ops.RopeTable(self.cfg.head_dim, theta) for theta in {self.cfg.rope_local, self.cfg.rope_global}
        }
        self.embed_scale = np.float32(math.sqrt(self.cfg.hidden))
        cfg = self.cfg
        self.heads = ops.HeadShape(cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.head_dim_v, cfg.eps)
        weights = [w for layer in self.layers for w in (layer.w_qkv, layer.wo, layer.w_gate_up, layer.w_down)]
        fused = all(self.ops.fused_weight(w) for w in weights)
        self.max_program_tokens = PROGRAM_MAX_TOKENS if fused else 0
        # Products with int weights round activations to 8 bits; attention may then round its
        # operands to bf16 (finer) and run on a tile unit. F32/F16/BF16 weights keep it fp32.
        self.attention_bf16 = fused
        # Only fused ops write into given buffers; the others allocate their results.
        self._arenas = ArenaPool() if fused else None
        self._buckets = BucketedPasses() if fused else None
        self._tables: tuple | None = None  # (gather tables or None,), made on first use
        self._program_cache = ProgramCache()
        self._programs = self._program_cache.programs

    @property
    def out_dim(self) -> int:
        return self.cfg.hidden

    @property
    def max_tokens(self) -> int:
        return self.cfg.context

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d for d in MATRYOSHKA_DIMS if d <= self.out_dim) or (self.out_dim,)

    def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """(batch, hidden) float32 vectors for token-id sequences (BOS/EOS included by the caller)."""
        cfg = self.cfg
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        if (lengths == 0).any():
            raise ValueError("empty token sequence")
        ids = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(lengths.sum()))
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab):
            raise ValueError(f"token id out of range [0, {cfg.vocab})")
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        positions = np.arange(ids.size) - np.repeat(bounds[:-1], lengths)
        recorded = self._program(lengths, bounds, positions) if ids.size <= self.max_program_tokens else None
        if recorded is None and self.max_program_tokens and self._buckets is not None:
            pooled = self._run_bucketed(ids, lengths, bounds, positions)
            if pooled is not None:
                return pooled
        embedded = dequantize_rows(self.token_embd, ids)
        x = None
        if recorded is not None:
            scale = self.embed_scale
            x = recorded.run(
                self.ops.threads, lambda a: np.multiply(embedded, scale, out=a.x0), lambda a: a.final.copy()
            )
        if x is not None:  # only JIT kernels ran and run: no BLAS thread limits to set
            return self._pool(x, bounds, lengths)
        with self.ops.session():
            attend = self._attention(Sequences(bounds[:-1], lengths))
            tables = {theta: rope.tables(positions) for theta, rope in self.rope.items()}
            if self._arenas is None:
                return self._pool(self._stack(embedded * self.embed_scale, tables, attend), bounds, lengths)
            with self._arenas.take(ids.size) as memory:
                arena = _Arena(cfg, memory)
                np.multiply(embedded, self.embed_scale, out=arena.x0)
                return self._pool(self._stack(arena.x0, tables, attend, arena), bounds, lengths)

    def _attention(self, plan: Sequences):
        """``attend(q, k, v, half_window, out_kwargs)``: every layer's attention over ``plan``."""
        bf16 = self.attention_bf16
        return lambda q, k, v, half_window, out: self.ops.attention(q, k, v, plan, half_window, bf16=bf16, **out)

    def _run_bucketed(
        self, ids: np.ndarray, lengths: np.ndarray, bounds: np.ndarray, positions: np.ndarray
    ) -> np.ndarray | None:
        """The batch as the program of its token-count bucket (``BucketedPasses``, padded by
        ``pad_to_bucket``); the layers' attention runs over every sequence between the steps.
        None when the bucket's program is busy or cannot be had."""
        padded = pad_to_bucket(ids, positions, bounds, lengths)
        tables = self._gather_tables()

        def load(memory: Arena) -> None:
            if tables is not None:  # the program's first steps gather the rows
                return
            embedded = dequantize_rows(self.token_embd, padded.ids)
            np.multiply(embedded, self.embed_scale, out=memory.rows("x0", self.cfg.hidden))
            for theta, (cos, sin) in self._rope_rows(memory).items():
                rows = self.rope[theta].tables(padded.positions)
                np.copyto(cos, rows[0])
                np.copyto(sin, rows[1])

        gathers = 0 if tables is None else 1 + 2 * len(self.rope)
        return self._buckets.run(
            padded.rows,
            self._record_bucket,
            OPS_PER_LAYER * self.cfg.n_layers + 1 + gathers,
            self.ops.lib.isa,
            self.ops.threads,
            load,
            lambda memory: self._pool(memory.rows("final", self.cfg.hidden), bounds, lengths),
            BucketReplay(padded),
            ARCH,
        )

    def _gather_tables(self, positions: int = 0) -> tuple | None:
        """The token table and each RoPE base's (cos, sin) tables of at least ``positions``
        positions (the context at least: a pass's positions are below its rows) as native row
        gathers (``ops.gather_tables``); None when any has to be looked up in numpy. Made
        again only when they must grow (recorded programs keep the tables they gather from)."""
        n = max(self.cfg.context, positions)
        if self._tables is None or (self._tables[0] is not None and self._tables[0][1].rows < n):
            tok, half = self.token_embd, self.cfg.head_dim // 2
            rope = [(t, GGMLQuantizationType.F32, n, half) for r in self.rope.values() for t in r.rows(n)]
            self._tables = (self.ops.gather_tables((tok.rows().reshape(-1), tok.qtype, *tok.shape), *rope),)
        return self._tables[0]

    def _rope_rows(self, memory: Arena) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Per RoPE base, the (cos, sin) rows a bucketed pass's positions are written into."""
        half = self.cfg.head_dim // 2
        return {theta: (memory.rows(f"cos{theta}", half), memory.rows(f"sin{theta}", half)) for theta in self.rope}

    def _record_bucket(self, memory: Arena) -> None:
        """The layer stack over ``memory``'s rows (recorded by ``BucketedPasses``), each
        attention a step whose work a replay plans from the sequences it passes in."""
        arena, rope_rows = _Arena(self.cfg, memory), self._rope_rows(memory)
        tables = self._gather_tables(memory.capacity)
        if tables is not None:
            self.ops.record_gather(tables[0], lambda run: run.ids, arena.x0, float(self.embed_scale))
            for i, (cos, sin) in enumerate(rope_rows.values()):
                self.ops.record_gather(tables[1 + 2 * i], lambda run: run.positions, cos)
                self.ops.record_gather(tables[2 + 2 * i], lambda run: run.positions, sin)

        def attend(q, k, v, half_window, out: dict) -> np.ndarray:
            return self.ops.record_attention(q, k, v, half_window, out["out"], bf16=self.attention_bf16)

        self._stack(arena.x0, rope_rows, attend, arena)

    def _pool(self, x: np.ndarray, bounds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Mean over each sequence's rows, then the dense head."""
        pooled = ops.mean_rows(x, bounds, lengths)
        for proj in self.dense:
            pooled = proj(np.ascontiguousarray(pooled, dtype=np.float32))
        return pooled.astype(np.float32, copy=False)

    def _stack(self, x: np.ndarray, tables, attend, arena: _Arena | None = None) -> np.ndarray:
        """Every layer and the output norm over the embedded tokens ``x`` (into ``arena``'s
        buffers when given), ``attend`` being each layer's attention."""
        cfg = self.cfg
        # The residual stream is (x, f, w): the next layer's input is x + rms(f)·w, added
        # inside the kernel that normalizes and quantizes it (none before layer 0).
        residual: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] = (x, None, None)
        for il, layer in enumerate(self.layers):
            glob = cfg.is_global(il)
            cos, sin = tables[cfg.rope_global if glob else cfg.rope_local]
            hw = None if glob else cfg.sliding_window // 2
            residual = self._layer(residual, layer, cos, sin, attend, hw, arena)
        x, f, w_post = residual
        return self.ops.add_norm(x, f, w_post, self.output_norm, cfg.eps, **_out(arena, "final"))

    def _layer(self, residual, layer: _Layer, cos, sin, attend, half_window: int | None, arena=None):
        """One layer on the residual stream (x, f, w) (see ``_stack``); returns the next one."""
        ops_ = self.ops
        eps = self.cfg.eps
        x, qkv = ops_.norm_matmul(layer.w_qkv, *residual, layer.attn_norm, eps, **_norm_out(arena, residual[0], "qkv"))
        # q_norm carries the 1/sqrt(head_dim) query scale (a power of two for 256: exact).
        q, k, v = ops_.qk_norm_rope(qkv, layer.q_norm_scaled, layer.k_norm, cos, sin, self.heads, **_out(arena, "qkv3"))
        attn = attend(q, k, v, half_window, _out(arena, "attn"))
        o = layer.wo(attn, **_out(arena, "o"))
        x, gate_up = ops_.norm_matmul(
            layer.w_gate_up, x, o, layer.post_attn_norm, layer.ffn_norm, eps, **_norm_out(arena, x, "gate_up")
        )
        return x, ops_.gelu_matmul(layer.w_down, gate_up, **_out(arena, "f")), layer.post_ffw_norm

    def _program(self, lengths: np.ndarray, bounds: np.ndarray, positions: np.ndarray) -> RecordedPass | None:
        """The recorded layer stack for a batch of these sequence lengths (recorded on first use;
        the x0 buffer of its arena takes the scaled token embeddings before each run)."""
        key = tuple(lengths.tolist())
        recorded = self._program_cache.get(key)
        if recorded is not None:
            return recorded
        arena = _Arena(self.cfg, Arena(int(lengths.sum())))
        plan = Sequences(bounds[:-1], lengths)
        tables = {theta: rope.tables(positions) for theta, rope in self.rope.items()}
        steps = OPS_PER_LAYER * self.cfg.n_layers + 1
        attend = self._attention(plan)
        forward = lambda: self._stack(arena.x0, tables, attend, arena)  # noqa: E731
        recorded = self._program_cache.record(
            key, forward, self.ops.lib.isa, steps, arena, (plan, tables), MAX_PROGRAMS, ARCH
        )
        if recorded is None:  # no runner here, or an op ran outside the kernels: stay eager
            self.max_program_tokens = 0
        return recorded


def _out(arena: _Arena | None, name: str) -> dict:
    return {} if arena is None else {"out": getattr(arena, name)}


def _norm_out(arena: _Arena | None, x: np.ndarray, name: str) -> dict:
    """Output buffers of a fused norm + product: the residual goes to the stream buffer that
    ``x`` is not (a kernel may not write the rows it reads from another thread)."""
    if arena is None:
        return {}
    return {"x_out": arena.xb if x is arena.xa else arena.xa, "out": getattr(arena, name)}


class _Arena:
    """The named activations of one forward over ``arena.t`` tokens (the buffers a step
    program reads and writes, or an eager pass borrows from the model's pool): every layer
    reuses them, the residual stream alternates between ``xa`` and ``xb``, and ``x0`` takes
    the scaled token embeddings before each run."""

    def __init__(self, cfg: GemmaEmbeddingConfig, arena: Arena):
        h, d, dv = cfg.hidden, cfg.head_dim, cfg.head_dim_v
        self.memory = arena
        self.x0, self.xa, self.xb, self.o, self.f, self.final = (
            arena.rows(name, h) for name in ("x0", "xa", "xb", "o", "f", "final")
        )
        self.qkv = arena.rows("qkv", (cfg.n_head + cfg.n_kv_head) * d + cfg.n_kv_head * dv)
        self.qkv3 = tuple(
            arena.rows(name, heads * width).reshape(arena.t, heads, width)
            for name, heads, width in (("q", cfg.n_head, d), ("k", cfg.n_kv_head, d), ("v", cfg.n_kv_head, dv))
        )
        self.attn = arena.rows("attn", cfg.n_head * dv)
        self.gate_up = arena.rows("gate_up", 2 * cfg.ffn)
