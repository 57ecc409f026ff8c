"""BERT-family encoders (`bert`: MiniLM, bge, e5, gte; `mpnet`): hyper-parameters, tensors,
forward pass, pooling.

Post-LayerNorm blocks with biases on every projection and exact GELU. Sequences are packed as
in the Gemma model: weight matmuls run once over all tokens of a batch (on the backend's
kernels: JIT or the numpy oracle), attention runs per sequence over its real tokens only.
MPNet adds a bucketed relative position bias, shared by all layers, and starts positions at
padding_idx + 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedpipe.codegen.encoder_fused import QK, ExtendBlocks
from embedpipe.codegen.ggml_types import GGMLQuantizationType
from embedpipe.codegen.prepared import PreparedMatmul
from embedpipe.runtime import bert_extend, encoder_ops, ops
from embedpipe.runtime.arena import Arena, ArenaPool
from embedpipe.runtime.backends import Backend, dequantize_rows, read_vector
from embedpipe.runtime.bert_config import EncoderConfig, validate_tensors
from embedpipe.runtime.bert_extend import EXTENDED_INPUT_PRODUCTS, BlockErrors
from embedpipe.runtime.bert_layer import EncoderLayer
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.step_programs import (
    MAX_PROGRAMS,
    PROGRAM_MAX_TOKENS,
    BucketedPasses,
    BucketReplay,
    ProgramCache,
    RecordedPass,
    pad_to_bucket,
)
from embedpipe.runtime.tokenizer import load_tokenizer

#: Tokens per forward pass: a batch with more runs as consecutive passes of whole sequences.
#: Every activation of a pass then stays in the caches, and no allocation is big enough to be
#: fresh zeroed pages on every call.
PASS_TOKENS = 512
#: Native calls of a forward: per layer the LayerNorm and QKV product, attention, output
#: product, LayerNorm and FFN up, GELU and FFN down (each pair one fused call for an
#: integer-dot weight, two otherwise), then the last LayerNorm. Passes of at most
#: PROGRAM_MAX_TOKENS tokens replay them as one recorded step program (``runtime.step_programs``);
#: longer ones replay the program of their token-count bucket, whose first steps gather the
#: token and position rows and whose attention steps (which depend on the sequence lengths)
#: each replay rewrites from its sequences.
OPS_PER_LAYER = 5


def token_passes(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` ranges of sequences holding at most ``budget`` tokens each (a
    longer sequence alone); one range for an empty list."""
    passes, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            passes.append((start, i))
            start, total = i, 0
        total += n
    passes.append((start, len(lengths)))
    return passes


class BertEncoderModel:
    """Token ids in, pooled sentence vectors out (before L2 normalization)."""

    def __init__(self, mf: GGUFModelFile, backend: Backend):
        self.cfg = EncoderConfig.from_gguf(mf)
        validate_tensors(mf, self.cfg)
        self.backend = backend
        self.ops = ops.ops_for(backend)
        self.eops = encoder_ops.encoder_ops_for(backend)
        self.token_embd = mf.tensors["token_embd.weight"]
        self.position_embd = read_vector(mf, "position_embd.weight")
        types = "token_types.weight" in mf.tensors
        self.type0 = read_vector(mf, "token_types.weight")[0].copy() if types else None
        self.embd_norm = (read_vector(mf, "token_embd_norm.weight"), read_vector(mf, "token_embd_norm.bias"))
        self._zeros = np.zeros(self.cfg.hidden, np.float32)
        rel = "attn_rel_b.weight" in mf.tensors
        self.rel_table = read_vector(mf, "attn_rel_b.weight") if rel else None  # (buckets, heads)
        self._bias_cache: np.ndarray | None = None
        self.scale = np.float32(1.0 / math.sqrt(self.cfg.head_dim))
        self.max_program_tokens = 0  # the calibration pass below runs the ops one by one
        self._arenas: ArenaPool | None = None
        self._program_cache = ProgramCache()
        self._programs = self._program_cache.programs
        known = bert_extend.cached_extensions(getattr(backend, "weight_cache", None), self.cfg)
        with ThreadPoolExecutor(max(1, getattr(self.ops, "threads", 1)), thread_name_prefix="embedpipe-load") as pool:
            self.layers = list(
                pool.map(lambda il: EncoderLayer(mf, il, backend, known[il] if known else {}), range(self.cfg.n_layers))
            )
        if known is None:
            self._extend_inputs(mf)
        products = [w for layer in self.layers for w in (layer.w_qkv, layer.wo, layer.w_up, layer.w_down)]
        recordable = self.eops.native and all(isinstance(w, PreparedMatmul) for w in products)
        self.max_program_tokens = PROGRAM_MAX_TOKENS if recordable else 0
        # eager passes write into a borrowed arena when every op takes output buffers
        self._arenas = ArenaPool() if recordable else None
        self._buckets = BucketedPasses() if recordable else None
        self._tables: tuple | None = None  # (gather tables or None,), made on first use

    def _extend_inputs(self, mf: GGUFModelFile) -> None:
        """Rank the blocks of each extendable product's input by their quantization error on a
        calibration pass, then extend those products by their worst blocks (and remember which
        in the backend's weight cache, so a warm load skips the tokenizer and the pass)."""
        wanted = [(layer, p) for layer in self.layers for p in EXTENDED_INPUT_PRODUCTS if layer.extendable(p)]
        if wanted and self.cfg.hidden % QK == 0:
            ids = load_tokenizer(mf).encode_batch(list(bert_extend.CALIBRATION_TEXTS))
            top = self.cfg.max_seq_length
            errors = BlockErrors()
            self._embed_pass([s if len(s) <= top else s[: top - 1] + s[-1:] for s in ids], probe=errors)
            count = min(bert_extend.EXTENDED_BLOCKS, self.cfg.hidden // QK)
            for layer, product in wanted:
                blocks = errors.worst((layer.il, product), count)
                layer.extend(self.backend, product, ExtendBlocks(self.cfg.hidden, blocks))
        bert_extend.remember_extensions(getattr(self.backend, "weight_cache", None), self.cfg, self.layers)

    @property
    def out_dim(self) -> int:
        return self.cfg.hidden

    @property
    def max_tokens(self) -> int:
        return self.cfg.max_seq_length

    @property
    def dims(self) -> tuple[int, ...]:
        return self.cfg.dims

    def position_bias(self, length: int) -> np.ndarray | None:
        """(heads, length, length) relative position bias (MPNet), grown on demand."""
        if self.rel_table is None:
            return None
        if self._bias_cache is None or self._bias_cache.shape[1] < length:
            buckets = encoder_ops.relative_position_buckets(length, self.cfg.n_buckets, self.cfg.max_distance)
            self._bias_cache = np.ascontiguousarray(self.rel_table[buckets].transpose(2, 0, 1))
        return self._bias_cache

    def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """(batch, hidden) float32 pooled vectors for token-id sequences (CLS/SEP included by the caller)."""
        passes = token_passes([len(s) for s in seqs], PASS_TOKENS)
        if len(passes) == 1:
            return self._embed_pass(seqs)
        return np.concatenate([self._embed_pass(seqs[a:b]) for a, b in passes])

    def _embed_pass(self, seqs: list[list[int]], probe: BlockErrors | None = None) -> np.ndarray:
        cfg = self.cfg
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        if (lengths == 0).any():
            raise ValueError("empty token sequence")
        if lengths.max() > cfg.n_positions - cfg.position_offset:
            raise ValueError(f"sequence longer than the {cfg.n_positions - cfg.position_offset} positions")
        ids = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(lengths.sum()))
        if ids.min() < 0 or ids.max() >= cfg.vocab:
            raise ValueError(f"token id out of range [0, {cfg.vocab})")
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        positions = np.arange(ids.size) - np.repeat(bounds[:-1], lengths) + cfg.position_offset
        bias = self.position_bias(int(lengths.max()))
        if probe is None and ids.size <= self.max_program_tokens:
            recorded = self._program(lengths, bounds, positions, bias)
            if recorded is not None:
                pooled = recorded.run(
                    self.ops.threads,
                    lambda a: np.copyto(a.rows("tokens", cfg.hidden), dequantize_rows(self.token_embd, ids)),
                    lambda a: self._pool(a.rows("x", cfg.hidden), bounds, lengths),
                )
                if pooled is not None:  # only JIT kernels ran: no BLAS thread limits to set
                    return pooled
        elif probe is None and self.max_program_tokens and self._buckets is not None:
            pooled = self._run_bucketed(ids, lengths, bounds, positions)
            if pooled is not None:
                return pooled
        attend = self._attention(bounds, lengths, bias)
        with self.ops.session():
            tokens = dequantize_rows(self.token_embd, ids)
            pos = np.ascontiguousarray(self.position_embd[positions])
            if self._arenas is None or probe is not None:
                return self._pool(self._stack(tokens, pos, attend, probe), bounds, lengths)
            with self._arenas.take(ids.size) as arena:
                return self._pool(self._stack(tokens, pos, attend, None, arena), bounds, lengths)

    def _attention(self, bounds: np.ndarray, lengths: np.ndarray, bias: np.ndarray | None) -> Callable:
        """``attend(qkv, qkv_bias, out_kwargs)``: every layer's attention over these sequences."""
        heads = (self.cfg.n_head, self.cfg.head_dim, bounds[:-1], lengths, self.scale, bias)
        return lambda qkv, qkv_bias, out: self.eops.attention(qkv, qkv_bias, *heads, **out)

    def _run_bucketed(
        self, ids: np.ndarray, lengths: np.ndarray, bounds: np.ndarray, positions: np.ndarray
    ) -> np.ndarray | None:
        """The pass as the program of its token-count bucket (``BucketedPasses``): the rows up
        to the bucket are one more sequence (id 0 at the first positions), whose output no
        vector reads; the layers' attention runs over every sequence between the steps. None
        when the bucket's program is busy or cannot be had."""
        cfg = self.cfg
        if BucketedPasses.bucket(ids.size) - ids.size > cfg.n_positions - cfg.position_offset:
            return None
        padded = pad_to_bucket(ids, positions, bounds, lengths, cfg.position_offset)
        bias = self.position_bias(int(padded.lengths.max()))
        gathered = self._gather_tables() is not None

        def load(arena: Arena) -> None:
            if not gathered:  # else the program's first steps gather the rows
                np.copyto(arena.rows("tokens", cfg.hidden), dequantize_rows(self.token_embd, padded.ids))
                np.take(self.position_embd, padded.positions, axis=0, out=arena.rows("pos", cfg.hidden))

        return self._buckets.run(
            padded.rows,
            self._record_bucket,
            self._program_steps() + 2 * gathered,
            self.ops.lib.isa,
            self.ops.threads,
            load,
            lambda arena: self._pool(arena.rows("x", cfg.hidden), bounds, lengths),
            BucketReplay(padded, bias),
            cfg.arch,
        )

    def _gather_tables(self) -> tuple | None:
        """The token and position tables of native row gathers (``ops.gather_tables``), made
        once; None when either has to be looked up in numpy."""
        if self._tables is None:
            tok, pos = self.token_embd, self.position_embd
            f32 = GGMLQuantizationType.F32
            self._tables = (
                self.ops.gather_tables((tok.rows().reshape(-1), tok.qtype, *tok.shape), (pos, f32, *pos.shape)),
            )
        return self._tables[0]

    def _record_bucket(self, arena: Arena) -> None:
        """The forward over ``arena``'s rows (recorded by ``BucketedPasses``), each attention a
        step whose sequences a replay passes in (a ``step_programs.BucketReplay``)."""
        cfg, eops = self.cfg, self.eops
        longest = min(arena.t, cfg.n_positions - cfg.position_offset)

        def attend(qkv: np.ndarray, qkv_bias: np.ndarray, out: dict) -> np.ndarray:
            return eops.record_attention(qkv, qkv_bias, cfg.n_head, cfg.head_dim, self.scale, longest, out["out"])

        tokens, pos = arena.rows("tokens", cfg.hidden), arena.rows("pos", cfg.hidden)
        tables = self._gather_tables()
        if tables is not None:
            self.ops.record_gather(tables[0], lambda run: run.ids, tokens)
            self.ops.record_gather(tables[1], lambda run: run.positions, pos)
        self._stack(tokens, pos, attend, None, arena)

    def _program_steps(self) -> int:
        eops = self.eops
        unfused = lambda layer: (  # noqa: E731
            (not eops.fuses_norm(layer.w_qkv)) + (not eops.fuses_norm(layer.w_up)) + (not eops.fuses_gelu(layer.w_down))
        )
        return 1 + sum(OPS_PER_LAYER + unfused(layer) for layer in self.layers)

    def _pool(self, x: np.ndarray, bounds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """CLS row or mean of each sequence's rows (new arrays: ``x`` may be an arena's)."""
        if self.cfg.pooling == "cls":
            return np.ascontiguousarray(x[bounds[:-1]])
        return ops.mean_rows(x, bounds, lengths)

    def _stack(self, tokens, pos, attend: Callable, probe=None, arena: Arena | None = None) -> np.ndarray:
        """The embedding LayerNorm and every block over the token embeddings (into ``arena``'s
        buffers when given), ``attend`` being each layer's attention; returns the last hidden
        states. Each LayerNorm but the last runs with the product that takes its output."""
        cfg = self.cfg
        type0 = self.type0 if self.type0 is not None else self._zeros
        norm = (tokens, type0, pos, *self.embd_norm)
        for layer in self.layers:
            norm = self._layer(norm, layer, attend, probe, arena)
        x, _ = self.eops.residual_norm(*norm, cfg.eps, None, **_norm_buffers(arena, cfg.hidden, "x", "", None))
        return x

    def _program(
        self, lengths: np.ndarray, bounds: np.ndarray, positions: np.ndarray, bias: np.ndarray | None
    ) -> RecordedPass | None:
        """The recorded forward for a pass of these sequence lengths (recorded on first use;
        the arena's "tokens" rows take the token embeddings before each run)."""
        key = tuple(lengths.tolist())
        recorded = self._program_cache.get(key)
        if recorded is not None:
            return recorded
        arena = Arena(int(lengths.sum()))
        # everything the steps' words point at lives as long as the program: the sequence
        # bounds, the position rows and this length's position bias (the model may replace
        # its bias table by a larger one later)
        bounds, lengths = np.array(bounds, np.int64), np.array(lengths, np.int64)
        pos = arena.rows("pos", self.cfg.hidden)
        pos[...] = self.position_embd[positions]
        tokens = arena.rows("tokens", self.cfg.hidden)
        attend = self._attention(bounds, lengths, bias)
        forward = lambda: self._stack(tokens, pos, attend, None, arena)  # noqa: E731
        recorded = self._program_cache.record(
            key,
            forward,
            self.ops.lib.isa,
            self._program_steps(),
            arena,
            (bounds, lengths, bias),
            MAX_PROGRAMS,
            self.cfg.arch,
        )
        if recorded is None:  # no runner here, or an op ran outside the kernels: stay on the ops
            self.max_program_tokens = 0
        return recorded

    def _layer(
        self, norm: tuple, layer: EncoderLayer, attend: Callable, probe: BlockErrors | None, arena: Arena | None
    ) -> tuple:
        """One block. ``norm``: the arguments ``(x, bias, res, weight, beta)`` of the LayerNorm
        whose output is the block's input; returns those of the LayerNorm of its output. With
        an ``arena`` every op writes into its buffers: the block's input in "x", the attention
        LayerNorm's output in "x1"."""
        cfg, eops = self.cfg, self.eops
        # the QKV product is a temporary: held past attention, its pages would stay taken and
        # the products after it would write into freshly mapped ones
        x, qkv = self._norm_product(norm, layer, "attn_qkv", probe, arena)
        attn = attend(qkv, layer.b_qkv, _out(arena, "attn", cfg.hidden))
        o = layer.wo(attn, **_out(arena, "o", layer.wo))
        x1, up = self._norm_product((o, layer.bo, x, *layer.attn_norm), layer, "ffn_up", probe, arena)
        ffn = _out(arena, "o", layer.w_down)
        if arena is not None and not eops.fuses_gelu(layer.w_down):  # the GELU is a step of its own
            ffn["act"] = arena.rows("act", cfg.ffn)
        down = eops.bias_gelu_matmul(layer.w_down, up, layer.b_up, **ffn)
        return (down, layer.b_down, x1, *layer.out_norm)

    def _norm_product(
        self, norm: tuple, layer: EncoderLayer, product: str, probe: BlockErrors | None, arena: Arena | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The LayerNorm ``norm`` and ``product`` (one of ``EXTENDED_INPUT_PRODUCTS``) of its
        output, extended as the layer extends that product's input: (rows, product)."""
        cfg, eops = self.cfg, self.eops
        w, extend = (layer.w_qkv, layer.qkv_ext) if product == "attn_qkv" else (layer.w_up, layer.up_ext)
        if probe is not None:  # calibration ranks the LayerNorm output's blocks
            x, xe = eops.residual_norm(*norm, cfg.eps, extend)
            probe((layer.il, product), x)
            return x, w(x if xe is None else xe)
        buffers = {}
        if arena is not None:
            names = _NORM_PRODUCT_BUFFERS[product]
            buffers = {"x_out": arena.rows(names[0], cfg.hidden), "out": arena.rows(names[1], w.n)}
            if extend is not None and not eops.fuses_norm(w):
                buffers["ext_out"] = arena.rows(names[2], extend.ext_width)
        return eops.residual_norm_matmul(w, *norm, cfg.eps, extend, **buffers)


#: Arena buffers of a LayerNorm and its product: (rows, product output, extended rows).
_NORM_PRODUCT_BUFFERS = {"attn_qkv": ("x", "qkv", "xe_qkv"), "ffn_up": ("x1", "up", "xe_up")}


def _out(arena: Arena | None, name: str, width: int | PreparedMatmul) -> dict:
    """``out=`` the arena's ``name`` rows (a product's are as wide as its output), or nothing."""
    if arena is None:
        return {}
    return {"out": arena.rows(name, width if isinstance(width, int) else width.n)}


def _norm_buffers(arena: Arena | None, hidden: int, name: str, ext_name: str, extend: ExtendBlocks | None) -> dict:
    """Output buffers of a LayerNorm: its rows and, when it extends them, the extended rows."""
    if arena is None:
        return {}
    buffers = {"out": arena.rows(name, hidden)}
    if extend is not None:
        buffers["ext_out"] = arena.rows(ext_name, extend.ext_width)
    return buffers
