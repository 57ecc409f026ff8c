"""HF checkout -> GGUF converter on a tiny random checkout (every quant), plus bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from gguf import quants
from safetensors.numpy import load_file, save_file

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime import convert as convert_mod
from embedpipe.runtime.convert import convert_checkout
from embedpipe.runtime.gguf_names import LAYER_TENSORS, QUANTS
from tests.runtime.hf_checkout_builder import DENSE_OUT, EXTRA_VOCAB, build_checkout

T = gguf.GGMLQuantizationType
HF_TO_GGUF_GLOBAL = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return build_checkout(tmp_path_factory.mktemp("hf") / "tiny_checkout")


def _hf_sources(root: Path) -> dict[str, np.ndarray]:
    """GGUF name -> source float32 array, mapped independently of the converter's table."""
    body = load_file(str(root / "model.safetensors"))
    out = {}
    for name, arr in body.items():
        if name in HF_TO_GGUF_GLOBAL:
            out[HF_TO_GGUF_GLOBAL[name]] = arr
        else:
            _, il, suffix = name.split(".", 2)
            out[f"blk.{il}.{LAYER_TENSORS[suffix]}"] = arr
    out["dense_2.weight"] = load_file(str(root / "2_Dense" / "model.safetensors"))["linear.weight"]
    out["dense_3.weight"] = load_file(str(root / "3_Dense" / "model.safetensors"))["linear.weight"]
    return out


def _kv(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("quant", list(QUANTS))
def test_convert_every_quant(checkout: Path, tmp_path: Path, quant: str, monkeypatch) -> None:
    monkeypatch.setattr(convert_mod, "CHUNK_ELEMENTS", 1000)  # many row chunks per tensor
    out = convert_checkout(checkout, tmp_path / f"tiny-{quant}.gguf", quant)
    reader = gguf.GGUFReader(out)
    qtype, ftype = QUANTS[quant]
    sources = _hf_sources(checkout)
    cfg = json.loads((checkout / "config.json").read_text())

    names = [t.name for t in reader.tensors]
    assert sorted(names) == sorted(sources) and len(names) == 2 * len(LAYER_TENSORS) + 4
    assert names[:4] == ["dense_2.weight", "dense_3.weight", "output_norm.weight", "token_embd.weight"]
    assert names[4].startswith("blk.0.") and names[-1].startswith("blk.1.")
    for t in reader.tensors:
        src = sources[t.name]
        assert list(t.shape) == list(reversed(src.shape)), t.name
        if src.ndim == 1:
            assert t.tensor_type == T.F32, t.name
            want = src + np.float32(1.0) if t.name.endswith("norm.weight") else src
            np.testing.assert_array_equal(np.asarray(t.data, dtype=np.float32), want, err_msg=t.name)
        else:
            assert t.tensor_type == qtype, t.name
            want_bytes = quants.quantize(src, qtype).tobytes()
            assert np.asarray(t.data).tobytes() == want_bytes, t.name

    kv = _kv(reader)
    a = "gemma-embedding"
    assert kv["general.architecture"] == a and kv["general.file_type"] == int(ftype)
    assert kv[f"{a}.block_count"] == 2 and kv[f"{a}.embedding_length"] == 64
    assert kv[f"{a}.attention.key_length"] == 32 and kv[f"{a}.attention.head_count_kv"] == 1
    assert kv[f"{a}.attention.sliding_window"] == 8 and kv[f"{a}.rope.freq_base_swa"] == 10000.0
    assert kv[f"{a}.dense_2_feat_in"] == 64 and kv[f"{a}.dense_2_feat_out"] == DENSE_OUT
    assert kv[f"{a}.dense_3_feat_in"] == DENSE_OUT and kv[f"{a}.dense_3_feat_out"] == 64
    assert kv[f"{a}.pooling_type"] == 1 and kv["general.license"] == "gemma"
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.pre"] == "default"
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (2, 1)
    assert (kv["tokenizer.ggml.unknown_token_id"], kv["tokenizer.ggml.padding_token_id"]) == (3, 0)
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is True
    assert kv["tokenizer.ggml.add_space_prefix"] is False
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"]


def test_tokenizer_metadata_follows_llama_cpp_rules(checkout: Path, tmp_path: Path) -> None:
    reader = gguf.GGUFReader(convert_checkout(checkout, tmp_path / "t.gguf", "f32"))
    kv = _kv(reader)
    tokens, scores, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"], kv["tokenizer.ggml.token_type"]
    sp = spm.SentencePieceProcessor(model_file=str(checkout / "tokenizer.model"))
    n_sp = sp.get_piece_size()
    assert len(tokens) == n_sp + EXTRA_VOCAB
    overridden = {0, 1, 2, 3, 7, 8, n_sp - 1}
    for i in range(n_sp):
        if i in overridden:
            continue
        assert tokens[i] == sp.id_to_piece(i) and scores[i] == pytest.approx(sp.get_score(i))
    assert types[4] == 3  # control symbol <mask>
    assert tokens[5] == "<u1>" and types[5] == 1  # SentencePiece user-defined -> NORMAL, as llama.cpp reads it
    assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"] and types[:4] == [3, 3, 3, 3]
    assert tokens[7] == "<unused0>" and types[7] == 3  # not marked special, but looks special
    assert tokens[8] == "  two spaces" and types[8] == 4  # user-defined: ▁ written as a space
    assert tokens[n_sp - 1] == "<added_in_range>" and types[n_sp - 1] == 4 and scores[n_sp - 1] == -1000.0
    assert tokens[n_sp:] == [f"[PAD{i}]" for i in range(n_sp, n_sp + EXTRA_VOCAB)]
    assert types[n_sp:] == [5] * EXTRA_VOCAB and scores[n_sp:] == [-10000.0] * EXTRA_VOCAB


def test_rows_not_whole_blocks_fall_back_to_f16(tmp_path: Path) -> None:
    root = build_checkout(tmp_path / "odd", config_overrides={"intermediate_size": 40})
    reader = gguf.GGUFReader(convert_checkout(root, tmp_path / "odd.gguf", "q4_0"))
    by_name = {t.name: t.tensor_type for t in reader.tensors}
    assert by_name["blk.0.ffn_down.weight"] == T.F16  # rows of 40 are not whole 32-blocks
    assert by_name["blk.0.ffn_up.weight"] == T.Q4_0 and by_name["token_embd.weight"] == T.Q4_0


def test_checkout_without_dense_head_gives_314_style_file(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "nodense"
    shutil.copytree(checkout, root)
    modules = json.loads((root / "modules.json").read_text())
    (root / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Dense")]))
    reader = gguf.GGUFReader(convert_checkout(root, tmp_path / "nd.gguf", "f16"))
    assert not any(t.name.startswith("dense_") for t in reader.tensors)
    assert not any("dense_2" in k for k in _kv(reader))


def _break(root: Path, how: str) -> None:
    cfg_path = root / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if how == "no_config":
        cfg_path.unlink()
    elif how == "wrong_arch":
        cfg_path.write_text(json.dumps(dict(cfg, architectures=["LlamaForCausalLM"])))
    elif how == "missing_key":
        cfg.pop("hidden_size")
        cfg_path.write_text(json.dumps(cfg))
    elif how == "no_tokenizer":
        (root / "tokenizer.model").unlink()
    elif how == "bad_tokenizer":
        (root / "tokenizer.model").write_bytes(b"\xff\xfe not a proto \x00")
    elif how in ("missing_tensor", "wrong_shape", "extra_tensor"):
        tensors = load_file(str(root / "model.safetensors"))
        if how == "missing_tensor":
            tensors.pop("layers.1.mlp.up_proj.weight")
        elif how == "wrong_shape":
            tensors["layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
        else:
            tensors["layers.0.mystery.weight"] = np.zeros((4,), np.float32)
        save_file(tensors, str(root / "model.safetensors"))
    elif how == "truncated_safetensors":
        data = (root / "model.safetensors").read_bytes()
        (root / "model.safetensors").write_bytes(data[:100])
    elif how == "dense_bias":
        conf = json.loads((root / "2_Dense" / "config.json").read_text())
        (root / "2_Dense" / "config.json").write_text(json.dumps(dict(conf, bias=True)))
    elif how == "dense_missing":
        (root / "3_Dense" / "model.safetensors").unlink()


BREAKAGES = {
    "no_config": "config.json",
    "wrong_arch": "LlamaForCausalLM",
    "missing_key": "hidden_size",
    "no_tokenizer": "tokenizer.model",
    "bad_tokenizer": "tokenizer.model",
    "missing_tensor": "blk.1.ffn_up.weight",
    "wrong_shape": "layers.0.self_attn.k_proj.weight",
    "extra_tensor": "layers.0.mystery.weight",
    "truncated_safetensors": "model.safetensors",
    "dense_bias": "2_Dense",
    "dense_missing": "3_Dense",
}


@pytest.mark.parametrize("how", list(BREAKAGES))
def test_bad_checkout_raises_clear_error(checkout: Path, tmp_path: Path, how: str) -> None:
    root = tmp_path / "broken"
    shutil.copytree(checkout, root)
    _break(root, how)
    out = tmp_path / "out.gguf"
    with pytest.raises(EmbedpipeError, match=BREAKAGES[how]):
        convert_checkout(root, out, "q8_0")
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


def test_an_unsupported_architecture_lists_every_one_the_converter_takes(checkout: Path, tmp_path: Path) -> None:
    """Not only EmbeddingGemma's: the BERT family converts too."""
    root = tmp_path / "broken"
    shutil.copytree(checkout, root)
    _break(root, "wrong_arch")
    with pytest.raises(EmbedpipeError, match="LlamaForCausalLM") as err:
        convert_checkout(root, tmp_path / "out.gguf", "q8_0")
    assert all(name in str(err.value) for name in ("Gemma3TextModel", "BertModel", "MPNetModel"))


def test_unknown_quant_and_missing_dir(checkout: Path, tmp_path: Path) -> None:
    with pytest.raises(EmbedpipeError, match="q3_k"):
        convert_checkout(checkout, tmp_path / "x.gguf", "q3_k")
    with pytest.raises(EmbedpipeError, match="not a directory"):
        convert_checkout(tmp_path / "nope", tmp_path / "x.gguf", "f32")
    with pytest.raises(EmbedpipeError, match="is a directory; name the .gguf file"):
        convert_checkout(checkout, tmp_path, "f32")


def test_cli_convert(checkout: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from embedpipe.cli.app import app

    out = tmp_path / "cli.gguf"
    res = CliRunner().invoke(app, ["model", "convert", str(checkout), "--quant", "bf16", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == T.BF16 and types["blk.0.attn_norm.weight"] == T.F32
    bad = CliRunner().invoke(app, ["model", "convert", str(checkout), "--quant", "q5", "-o", str(out)])
    assert bad.exit_code == 2
