"""EmbeddingGemma's hyper-parameters read from its GGUF (``GemmaEmbeddingConfig``), the tensor
table they imply, and the check of a file's tensors against it (``validate_tensors``)."""

from __future__ import annotations

from dataclasses import dataclass

from embedpipe.errors import ModelFileError
from embedpipe.runtime.gguf_file import REPAIR_HINT, GGUFModelFile
from embedpipe.runtime.gguf_schema import tokenizer_problem

ARCH = "gemma-embedding"
DEFAULT_SWA_PERIOD = 6  # every 6th layer (il % 6 == 5) attends globally
MATRYOSHKA_DIMS: tuple[int, ...] = (768, 512, 256, 128)


@dataclass(frozen=True)
class GemmaEmbeddingConfig:
    n_layers: int
    hidden: int
    n_head: int
    n_kv_head: int
    head_dim: int
    head_dim_v: int
    ffn: int
    vocab: int
    context: int
    eps: float
    rope_global: float
    rope_local: float
    sliding_window: int
    swa_period: int
    dense_out: int | None

    @classmethod
    def from_gguf(cls, mf: GGUFModelFile) -> GemmaEmbeddingConfig:
        arch = mf.architecture
        if arch != ARCH:
            raise ModelFileError(f"{mf.path}: architecture {arch!r} is not supported (expected {ARCH!r})")
        p = f"{ARCH}."
        n_head = int(mf.require(p + "attention.head_count"))
        embd = mf.tensors.get("token_embd.weight")
        dense = mf.get(p + "dense_2_feat_out")
        return cls(
            n_layers=int(mf.require(p + "block_count")),
            hidden=int(mf.require(p + "embedding_length")),
            n_head=n_head,
            n_kv_head=int(mf.get(p + "attention.head_count_kv", n_head)),
            head_dim=int(mf.require(p + "attention.key_length")),
            head_dim_v=int(mf.get(p + "attention.value_length") or mf.require(p + "attention.key_length")),
            ffn=int(mf.require(p + "feed_forward_length")),
            vocab=embd.shape[0] if embd is not None else 0,
            context=int(mf.require(p + "context_length")),
            eps=float(mf.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
            rope_global=float(mf.get(p + "rope.freq_base", 1_000_000.0)),
            rope_local=float(mf.get(p + "rope.freq_base_swa", 10_000.0)),
            sliding_window=int(mf.require(p + "attention.sliding_window")),
            swa_period=int(mf.get(p + "attention.sliding_window_pattern", DEFAULT_SWA_PERIOD)),
            dense_out=int(dense) if dense is not None else None,
        )

    def is_global(self, layer: int) -> bool:
        return layer % self.swa_period == self.swa_period - 1

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every required tensor and its numpy shape (rows = output features)."""
        h, q, kv, v, f = (
            self.hidden,
            self.n_head * self.head_dim,
            self.n_kv_head * self.head_dim,
            self.n_kv_head * self.head_dim_v,
            self.ffn,
        )
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab, h), "output_norm.weight": (h,)}
        per_layer = {
            "attn_norm": (h,),
            "attn_q": (q, h),
            "attn_k": (kv, h),
            "attn_v": (v, h),
            "attn_q_norm": (self.head_dim,),
            "attn_k_norm": (self.head_dim,),
            "attn_output": (h, self.n_head * self.head_dim_v),
            "post_attention_norm": (h,),
            "ffn_norm": (h,),
            "ffn_gate": (f, h),
            "ffn_up": (f, h),
            "ffn_down": (h, f),
            "post_ffw_norm": (h,),
        }
        for il in range(self.n_layers):
            for name, shape in per_layer.items():
                shapes[f"blk.{il}.{name}.weight"] = shape
        return shapes

    def dense_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.dense_out is None:
            return {}
        return {"dense_2.weight": (self.dense_out, self.hidden), "dense_3.weight": (self.hidden, self.dense_out)}


def validate_tensors(mf: GGUFModelFile, cfg: GemmaEmbeddingConfig) -> bool:
    """Check presence and shapes of every tensor; returns whether the dense head is present."""
    # pieces are UTF-8-checked where they are read: when the tokenizer model is built (tokenizer.py)
    problem = tokenizer_problem(mf.metadata, cfg.vocab or None, check_utf8=False)
    if problem:
        raise ModelFileError(f"{mf.path}: {problem}; {REPAIR_HINT}")
    expected = cfg.tensor_shapes()
    present = [n for n in ("dense_2.weight", "dense_3.weight") if n in mf.tensors]
    has_dense = len(present) == 2
    if present and not has_dense or cfg.dense_out is not None and not has_dense:
        missing = sorted({"dense_2.weight", "dense_3.weight"} - set(present))
        raise ModelFileError(
            f"{mf.path}: the dense head is incomplete (missing tensor {', '.join(missing)}); {REPAIR_HINT}"
        )
    if has_dense:
        expected.update(
            cfg.dense_shapes()
            or {
                "dense_2.weight": mf.tensors["dense_2.weight"].shape,
                "dense_3.weight": (cfg.hidden, mf.tensors["dense_2.weight"].shape[0]),
            }
        )
    for name, shape in expected.items():
        tensor = mf.tensors.get(name)
        if tensor is None:
            raise ModelFileError(f"{mf.path}: missing tensor {name}; {REPAIR_HINT}")
        if tuple(tensor.shape) != tuple(shape):
            raise ModelFileError(f"{mf.path}: tensor {name} has shape {tensor.shape}, expected {shape}; {REPAIR_HINT}")
    if cfg.head_dim % 2:
        raise ModelFileError(f"{mf.path}: head_dim {cfg.head_dim} must be even for RoPE")
    if cfg.n_head % cfg.n_kv_head:
        raise ModelFileError(f"{mf.path}: {cfg.n_head} query heads do not group over {cfg.n_kv_head} KV heads")
    return has_dense
