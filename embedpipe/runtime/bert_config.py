"""A BERT-family encoder's hyper-parameters read from its GGUF (``EncoderConfig``: ``bert`` —
MiniLM, bge, e5, gte — and ``mpnet``) and the check that its tensors have the shapes they
imply (``validate_tensors``), before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from embedpipe.errors import ModelFileError
from embedpipe.runtime import bert_names as bn
from embedpipe.runtime.gguf_file import GGUFModelFile

POOLING: dict[int, str] = {int(gguf.PoolingType.MEAN): "mean", int(gguf.PoolingType.CLS): "cls"}


@dataclass(frozen=True)
class EncoderConfig:
    arch: str
    n_layers: int
    hidden: int
    n_head: int
    ffn: int
    vocab: int
    n_positions: int
    eps: float
    pooling: str
    max_seq_length: int
    position_offset: int
    n_buckets: int
    max_distance: int
    dims: tuple[int, ...]

    @classmethod
    def from_gguf(cls, mf: GGUFModelFile) -> EncoderConfig:
        arch = mf.architecture
        if arch not in bn.ARCHITECTURES:
            raise ModelFileError(f"{mf.path}: architecture {arch!r} is not a BERT-family encoder")
        p = f"{arch}."
        pooling_id = int(mf.get(p + "pooling_type", int(gguf.PoolingType.MEAN)))
        if pooling_id not in POOLING:
            raise ModelFileError(f"{mf.path}: pooling type {pooling_id} is not supported (mean or CLS)")
        embd = mf.tensors.get("token_embd.weight")
        hidden = int(mf.require(p + "embedding_length"))
        offset = int(mf.get(bn.KEY_POSITION_OFFSET, 0))
        n_positions = int(mf.require(p + "context_length"))
        max_seq = int(mf.get(bn.KEY_MAX_SEQ, n_positions - offset))
        if not 0 < max_seq <= n_positions - offset:
            raise ModelFileError(f"{mf.path}: {bn.KEY_MAX_SEQ} {max_seq} exceeds the {n_positions - offset} positions")
        dims = tuple(int(d) for d in (mf.get(bn.KEY_DIMS) if mf.get(bn.KEY_DIMS) is not None else [hidden]))
        if not dims or any(not 0 < d <= hidden for d in dims):
            raise ModelFileError(f"{mf.path}: {bn.KEY_DIMS} {list(dims)} not in 1..{hidden}")
        return cls(
            arch=arch,
            n_layers=int(mf.require(p + "block_count")),
            hidden=hidden,
            n_head=int(mf.require(p + "attention.head_count")),
            ffn=int(mf.require(p + "feed_forward_length")),
            vocab=embd.shape[0] if embd is not None else 0,
            n_positions=n_positions,
            eps=float(mf.get(p + "attention.layer_norm_epsilon", 1e-12)),
            pooling=POOLING[pooling_id],
            max_seq_length=max_seq,
            position_offset=offset,
            n_buckets=int(mf.get(bn.KEY_REL_BUCKETS, 32)) if arch == "mpnet" else 0,
            max_distance=int(mf.get(bn.KEY_REL_MAX_DISTANCE, bn.MPNET_REL_MAX_DISTANCE)),
            dims=dims,
        )

    @property
    def family(self) -> bn.Family:
        return bn.ARCHITECTURES[self.arch]

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head

    def hparams(self) -> bn.BertHParams:
        return bn.BertHParams(
            self.n_layers,
            self.hidden,
            self.ffn,
            self.n_head,
            self.vocab,
            self.n_positions,
            0,
            self.eps,
            self.n_buckets,
            self.position_offset,
        )


def validate_tensors(mf: GGUFModelFile, cfg: EncoderConfig) -> None:
    if cfg.n_head <= 0 or cfg.hidden % cfg.n_head:
        raise ModelFileError(f"{mf.path}: {cfg.hidden} hidden is not a multiple of {cfg.n_head} heads")
    expected = bn.expected_shapes(cfg.family, cfg.hparams())
    for name, shape in expected.items():
        tensor = mf.tensors.get(name)
        if tensor is None:
            raise ModelFileError(f"{mf.path}: missing tensor {name}")
        if name == "token_types.weight":
            if len(tensor.shape) != 2 or tensor.shape[1] != cfg.hidden or tensor.shape[0] < 1:
                raise ModelFileError(f"{mf.path}: tensor {name} has shape {tensor.shape}")
        elif tuple(tensor.shape) != tuple(shape):
            raise ModelFileError(f"{mf.path}: tensor {name} has shape {tensor.shape}, expected {shape}")
