"""sentence-transformers EmbeddingGemma checkout -> GGUF, as llama.cpp's converter writes it.

Tensors are streamed one at a time from the safetensors files (2-D weights quantized in row
chunks, which gives the same bytes as quantizing the whole tensor since every GGML block lies
within one row), so peak memory is about one fp32 tensor plus its encoded copy.
Quantization is `gguf.quants.quantize`, bit for bit; 1-D tensors and norms stay F32 and a
weight whose rows are not a whole number of blocks falls back to F16, as in llama.cpp.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import gguf
import numpy as np
from gguf import quants

from embedpipe.errors import EmbedpipeError, ModelFileError
from embedpipe.runtime import gguf_names as names
from embedpipe.runtime.hf_vocab import build_vocab

log = logging.getLogger(__name__)

#: safetensors dtypes we read (the numpy framework of safetensors has no bfloat16).
SOURCE_DTYPES: frozenset[str] = frozenset({"F32", "F16", "F64"})
#: Elements per quantization chunk: bounds the temporaries of gguf.quants.
CHUNK_ELEMENTS = 1 << 22
MODEL_FILE = "model.safetensors"
DENSE_IDENTITY = "torch.nn.modules.linear.Identity"


class ConvertError(EmbedpipeError):
    """The checkout cannot be converted (missing file, unexpected config or tensor)."""


@dataclass(frozen=True)
class TensorSource:
    gguf_name: str
    file: Path
    hf_name: str
    shape: tuple[int, ...]  # numpy shape written to the GGUF (rows may be trimmed)
    add_one: bool


@dataclass(frozen=True)
class DenseModule:
    prefix: str  # dense_2 / dense_3
    in_features: int
    out_features: int
    file: Path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path}: required file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path}: cannot parse JSON ({exc})") from exc


def read_hparams(src_dir: Path) -> names.HParams:
    """Validate config.json and read the hyper-parameters (clear error naming the key)."""
    path = src_dir / "config.json"
    cfg = _read_json(path)
    archs = cfg.get("architectures") or []
    if not names.HF_ARCHITECTURES.intersection(archs):
        from embedpipe.runtime.bert_names import FAMILIES

        known = sorted(names.HF_ARCHITECTURES.union(*(f.hf_architectures for f in FAMILIES)))
        raise ConvertError(f"{path}: architectures {archs} not supported; expected one of {known}")
    values = {}
    for f in fields(names.HParams):
        key, default = names.CONFIG_KEYS[f.name]
        value = cfg.get(key, default)
        if value is None:
            raise ConvertError(f"{path}: required key {key!r} is missing")
        want = float if f.type in ("float", float) else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (want is int and value != int(value)):
            raise ConvertError(f"{path}: key {key!r} must be a number, got {value!r}")
        if value <= 0:
            raise ConvertError(f"{path}: key {key!r} must be positive, got {value!r}")
        values[f.name] = want(value)
    return names.HParams(**values)


def read_dense_modules(src_dir: Path) -> list[DenseModule]:
    """The sentence-transformers Dense head listed in modules.json (empty if none)."""
    modules_path = src_dir / "modules.json"
    if not modules_path.is_file():
        return []
    modules = _read_json(modules_path)
    dense = []
    for mod in modules:
        if not str(mod.get("type", "")).endswith("Dense"):
            continue
        mod_path = mod.get("path", "")
        prefix = names.DENSE_MODULES.get(mod_path)
        if prefix is None:
            raise ConvertError(f"{modules_path}: unsupported Dense module path {mod_path!r}")
        conf_path = src_dir / mod_path / "config.json"
        conf = _read_json(conf_path)
        if conf.get("bias"):
            raise ConvertError(f"{conf_path}: Dense layers with bias are not supported")
        if conf.get("activation_function", DENSE_IDENTITY) != DENSE_IDENTITY:
            raise ConvertError(f"{conf_path}: Dense activation {conf['activation_function']!r} not supported")
        try:
            in_f, out_f = int(conf["in_features"]), int(conf["out_features"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError(f"{conf_path}: in_features/out_features missing or invalid") from exc
        file = src_dir / mod_path / MODEL_FILE
        if not file.is_file():
            raise ConvertError(f"{file}: Dense weights are missing")
        dense.append(DenseModule(prefix, in_f, out_f, file))
    return dense


def read_pooling_type(src_dir: Path) -> gguf.PoolingType | None:
    modules_path = src_dir / "modules.json"
    if not modules_path.is_file():
        return None
    for mod in _read_json(modules_path):
        if str(mod.get("type", "")).endswith("Pooling"):
            conf_path = src_dir / mod.get("path", "") / "config.json"
            conf = _read_json(conf_path)
            for flag, ptype in names.POOLING_FLAGS:
                if conf.get(flag):
                    return ptype
            raise ConvertError(f"{conf_path}: only mean, CLS and last-token pooling are supported")
    return None


def _safetensors_index(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """hf name -> (dtype, shape) from a safetensors header, with a clear error if unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise ConvertError(f"{path}: required file is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (sl.get_dtype(), tuple(sl.get_shape()))
            return out
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def plan_tensors(src_dir: Path, hp: names.HParams, dense: list[DenseModule]) -> list[TensorSource]:
    """Every tensor to write, in llama.cpp's order, after checking names, shapes and dtypes."""
    body_file = src_dir / MODEL_FILE
    index = _safetensors_index(body_file)
    expected = names.expected_shapes(hp)
    plan: dict[str, TensorSource] = {}
    for hf_name, (dtype, shape) in index.items():
        gname = names.hf_to_gguf_name(hf_name)
        if gname is None:
            raise ConvertError(f"{body_file}: unexpected tensor {hf_name!r}")
        if gname not in expected:
            raise ConvertError(f"{body_file}: tensor {hf_name!r} is beyond num_hidden_layers={hp.n_layer}")
        if dtype not in SOURCE_DTYPES:
            raise ConvertError(f"{body_file}: tensor {hf_name!r} has dtype {dtype}; supported: {sorted(SOURCE_DTYPES)}")
        want = expected[gname]
        out_shape = shape
        if gname == "token_embd.weight" and len(shape) == 2 and shape[1] == want[1] and shape[0] >= want[0]:
            out_shape = want  # drop rows beyond the tokenizer's vocabulary, as llama.cpp does
        if out_shape != want:
            raise ConvertError(f"{body_file}: tensor {hf_name!r} has shape {list(shape)}, expected {list(want)}")
        plan[gname] = TensorSource(gname, body_file, hf_name, want, names.is_norm(gname))
    missing = sorted(set(expected) - set(plan), key=names.tensor_sort_key)
    if missing:
        raise ConvertError(f"{body_file}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for mod in dense:
        idx = _safetensors_index(mod.file)
        if "linear.weight" not in idx:
            raise ConvertError(f"{mod.file}: tensor 'linear.weight' is missing")
        dtype, shape = idx["linear.weight"]
        if dtype not in SOURCE_DTYPES:
            raise ConvertError(f"{mod.file}: tensor 'linear.weight' has unsupported dtype {dtype}")
        if shape != (mod.out_features, mod.in_features):
            raise ConvertError(
                f"{mod.file}: 'linear.weight' has shape {list(shape)}, expected {[mod.out_features, mod.in_features]}"
            )
        gname = f"{mod.prefix}.weight"
        plan[gname] = TensorSource(gname, mod.file, "linear.weight", shape, False)
    return [plan[k] for k in sorted(plan, key=names.tensor_sort_key)]


def target_type(src: TensorSource, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """F32 for 1-D tensors and norms; qtype for weights, F16 if rows are not whole blocks."""
    if len(src.shape) <= 1 or src.gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if src.shape[-1] % block != 0:
        log.warning("%s: row length %d is not a multiple of %d, storing F16", src.gguf_name, src.shape[-1], block)
        return gguf.GGMLQuantizationType.F16
    return qtype


def encode_tensor(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """GGUF bytes (uint8, byte shape) of a float32 tensor: gguf.quants.quantize in row chunks."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.view(np.uint8)
    rows = data.reshape(-1, data.shape[-1])
    byte_shape = quants.quant_shape_to_byte_shape(rows.shape, qtype)
    out = np.empty(byte_shape, dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // rows.shape[1])
    for a in range(0, rows.shape[0], step):
        out[a : a + step] = quants.quantize(rows[a : a + step], qtype).view(np.uint8).reshape(-1, byte_shape[1])
    return out.reshape(quants.quant_shape_to_byte_shape(data.shape, qtype))


def _write_kv(
    writer: gguf.GGUFWriter, src_dir: Path, hp: names.HParams, dense: list[DenseModule], file_type: gguf.LlamaFileType
) -> None:
    """Key/values in the order llama.cpp writes them."""
    writer.add_type(gguf.GGUFType.MODEL)
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, src_dir, None, total)
    if meta.name is None:
        meta.name = src_dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    meta.set_gguf_meta_model(writer)
    for method, field in names.ARCH_KV_WRITERS:
        getattr(writer, method)(getattr(hp, field))
    for mod in dense:
        writer.add_dense_features_dims(mod.prefix, mod.in_features, mod.out_features)
    pooling = read_pooling_type(src_dir)
    if pooling is not None:
        writer.add_pooling_type(pooling)

    vocab = build_vocab(src_dir, hp.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)  # chatty about HF post-processors
    gguf.SpecialVocab(src_dir, load_merges=False, n_vocab=len(vocab.tokens)).add_to_gguf(writer)
    writer.add_add_space_prefix(False)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(file_type)


def convert_checkout(
    src_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    quant: str = "q8_0",
    progress: bool = False,
    metadata: Mapping | None = None,
) -> Path:
    """Convert a sentence-transformers checkout to a GGUF file (written atomically).

    EmbeddingGemma is converted here; BERT-family encoders (config.json architectures) by
    `convert_bert`. `metadata` (prompt convention, Matryoshka widths) is recorded for those.
    """
    src_dir, out_path = Path(src_dir), Path(out_path)
    if quant not in names.QUANTS:
        raise ConvertError(f"unknown quant {quant!r}; choose one of {', '.join(names.QUANTS)}")
    if not src_dir.is_dir():
        raise ConvertError(f"{src_dir}: not a directory")
    if out_path.is_dir():
        raise ConvertError(f"{out_path}: is a directory; name the .gguf file to write")
    from embedpipe.runtime import bert_names, convert_bert

    if bert_names.family_for(_read_json(src_dir / "config.json").get("architectures") or []) is not None:
        return convert_bert.convert_bert_checkout(src_dir, out_path, quant, progress=progress, metadata=metadata)
    qtype, file_type = names.QUANTS[quant]
    hp = read_hparams(src_dir)
    dense = read_dense_modules(src_dir)
    plan = plan_tensors(src_dir, hp, dense)
    types = [target_type(t, qtype) for t in plan]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(path=None, arch=names.ARCH)
    try:
        for src, ttype in zip(plan, types):
            byte_shape = quants.quant_shape_to_byte_shape(src.shape, ttype)
            writer.add_tensor_info(
                src.gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ttype
            )
        _write_kv(writer, src_dir, hp, dense, file_type)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, plan, types, progress)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def _write_tensors(writer: gguf.GGUFWriter, plan: list[TensorSource], types: list, progress: bool) -> None:
    from safetensors import safe_open
    from tqdm import tqdm

    total = sum(int(np.prod(t.shape)) * 4 for t in plan)
    with (
        contextlib.ExitStack() as stack,
        tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar,
    ):
        handles: dict[Path, object] = {}
        for src, ttype in zip(plan, types):
            if src.file not in handles:
                handles[src.file] = stack.enter_context(safe_open(str(src.file), framework="numpy"))
            data = handles[src.file].get_tensor(src.hf_name)
            data = np.asarray(data[: src.shape[0]] if data.shape != src.shape else data, dtype=np.float32)
            if src.add_one:
                data = data + np.float32(1.0)
            if not np.isfinite(data).all():
                raise ConvertError(f"{src.file}: tensor {src.hf_name!r} contains NaN or Inf")
            writer.write_tensor_data(encode_tensor(data, ttype))
            bar.update(int(np.prod(src.shape)) * 4)
            del data
