"""BERT and MPNet on tiny random checkouts: converter round trip, HF-identical WordPiece ids,
and the forward pass (JIT and numpy backends) against an independent float64 reference."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer as HFTokenizer

from embedpipe.errors import EmbedpipeError, InputTooLongError
from embedpipe.runtime import bert, bert_extend
from embedpipe.runtime import bert_names as bn
from embedpipe.runtime.backends import dequantize
from embedpipe.runtime.bert import token_passes
from embedpipe.runtime.convert import convert_checkout
from embedpipe.runtime.embedder import Embedder
from embedpipe.runtime.gguf_file import GGUFModelFile
from embedpipe.runtime.tokenizer import load_tokenizer
from tests.runtime.bert_checkout_builder import (
    build_bert_checkout,
    build_mpnet_checkout,
    reference_embedding,
)

TEXTS = [
    "hello world",
    "The quick brown fox, jumping!",
    "Café naïve",
    "東京 unbelievable",
    "",
    "[CLS] x [MASK] <s> </s> <mask> y<mask>",
    "zzzzzzzzzzzzzzzzzzzz long words aaaaaaaaaaaaa",
    "a\x00b\tc\u200bd",
    "   spaced   out   ",
    "(brackets) [more] <angles>",
    "it's e-mail",
]
BUILDERS = {
    "bert": build_bert_checkout,
    "bert_cls": lambda root: build_bert_checkout(root, pooling="cls", seed=5),
    "mpnet": build_mpnet_checkout,
}


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bert")
    return {name: build(base / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def ggufs(checkouts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("bert_gguf")
    return {
        (name, quant): convert_checkout(src, base / f"{name}-{quant}.gguf", quant)
        for name, src in checkouts.items()
        for quant in ("f32", "f16", "q8_0")
    }


@pytest.mark.parametrize("name", list(BUILDERS))
def test_converter_round_trip(name, checkouts, ggufs) -> None:
    src = load_file(str(checkouts[name] / "model.safetensors"))
    mf = GGUFModelFile(ggufs[(name, "f32")])
    fam = bn.ARCHITECTURES[mf.architecture]
    assert mf.architecture == ("mpnet" if name == "mpnet" else "bert")
    seen = set()
    for hf_name, data in src.items():
        gname = bn.hf_to_gguf_name(fam, hf_name)
        if gname == "":
            assert hf_name.startswith("pooler.")
            continue
        seen.add(gname)
        np.testing.assert_array_equal(dequantize(mf.tensors[gname]), data)
    assert seen == set(mf.tensors)
    arch = mf.architecture
    assert mf.get(f"{arch}.attention.causal") is False
    assert mf.get(f"{arch}.pooling_type") == (2 if name == "bert_cls" else 1)
    assert mf.get("tokenizer.ggml.model") == "bert" and mf.get(bn.KEY_MAX_SEQ) == 48
    tokens = [t.decode() for t in mf.get("tokenizer.ggml.tokens")]
    vocab = json.loads((checkouts[name] / "tokenizer.json").read_text())["model"]["vocab"]
    assert tokens[vocab["hello"]] == "\u2581hello" and tokens[vocab["##ing"]] == "ing"  # llama.cpp's phantom space
    if name == "mpnet":
        assert "cannot load" in mf.get("general.description")
        assert mf.get(bn.KEY_POSITION_OFFSET) == 2 and mf.tensors["attn_rel_b.weight"].shape == (32, 4)
    q8 = GGUFModelFile(ggufs[(name, "q8_0")])
    assert q8.tensors["blk.0.attn_q.weight"].qtype == gguf.GGMLQuantizationType.Q8_0
    assert q8.tensors["blk.0.attn_q.bias"].qtype == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("name", list(BUILDERS))
def test_wordpiece_ids_match_hf_tokenizers(name, checkouts, ggufs) -> None:
    ours = load_tokenizer(GGUFModelFile(ggufs[(name, "q8_0")]))
    ref = HFTokenizer.from_file(str(checkouts[name] / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text).ids, text
        assert ours.encode(text, add_special=False) == ref.encode(text, add_special_tokens=False).ids, text
    assert ours.encode_batch(TEXTS) == [e.ids for e in ref.encode_batch(TEXTS)]


@pytest.mark.parametrize("threshold", [0, 10**9])
def test_batches_encode_alike_on_this_thread_and_on_the_library_pool(threshold, checkouts, ggufs, monkeypatch):
    """A batch below PARALLEL_ENCODE_MIN_CHARS is encoded text by text, above it by the
    library's batch call: the ids are the same either way."""
    from embedpipe.runtime import wordpiece

    monkeypatch.setattr(wordpiece, "PARALLEL_ENCODE_MIN_CHARS", threshold)
    ours = load_tokenizer(GGUFModelFile(ggufs[("bert", "q8_0")]))
    ref = HFTokenizer.from_file(str(checkouts["bert"] / "tokenizer.json"))
    for texts in (TEXTS, TEXTS[:1], []):
        assert ours.encode_batch(texts) == [e.ids for e in ref.encode_batch(texts)]
        assert ours.encode_batch(texts, add_special=False) == [
            e.ids for e in ref.encode_batch(texts, add_special_tokens=False)
        ]


def test_long_words_become_unk(checkouts, ggufs) -> None:
    ours = load_tokenizer(GGUFModelFile(ggufs[("bert", "f32")]))  # max_input_chars_per_word is 12 here
    assert ours.encode("abcdefghijklm", add_special=False) == [ours.special.unk]
    assert ours.encode("abcdefghijkl", add_special=False) != [ours.special.unk]


def test_llama_cpp_style_file_without_embedpipe_keys(checkouts, tmp_path) -> None:
    """A file carrying only llama.cpp's keys tokenizes with BERT-uncased defaults."""
    src = GGUFModelFile(convert_checkout(checkouts["bert"], tmp_path / "full.gguf", "f32"))
    reader = gguf.GGUFReader(src.path)
    writer = gguf.GGUFWriter(str(tmp_path / "plain.gguf"), arch="bert")
    for field in reader.fields.values():
        if field.name.startswith(("embedpipe.", "GGUF.", "general.architecture")):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = load_tokenizer(GGUFModelFile(tmp_path / "plain.gguf"))
    ref = HFTokenizer.from_file(str(checkouts["bert"] / "tokenizer.json"))
    for text in TEXTS[:6] + TEXTS[7:]:  # not the long words: llama.cpp files get the default 100-char rule
        assert ours.encode(text) == ref.encode(text).ids, text
    emb = Embedder.load(tmp_path / "plain.gguf", backend="numpy")
    assert emb.max_tokens == 64 and emb.prompts == "none"


@pytest.mark.parametrize("backend", ["numpy", "jit"])
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("quant,floor", [("f32", 0.99999), ("f16", 0.9999), ("q8_0", 0.999)])
def test_forward_matches_float64_reference(name, backend, quant, floor, checkouts, ggufs) -> None:
    emb = Embedder.load(ggufs[(name, quant)], backend=backend)
    texts = TEXTS + ["the quick brown fox " * 11]  # 46 tokens: one batch mixes lengths 2..46
    ids = emb.tokenize(texts, task="query")
    got = emb.encode(texts, task="query", batch_size=5)
    ref = np.stack([reference_embedding(checkouts[name], seq) for seq in ids])
    cos = (got.astype(np.float64) * ref).sum(1)
    assert cos.min() >= floor, (name, quant, cos.min())
    if quant == "f32":
        assert np.abs(got - ref).max() < 1e-5


def test_batching_does_not_change_vectors(ggufs) -> None:
    emb = Embedder.load(ggufs[("mpnet", "f32")], backend="jit")
    one_by_one = np.concatenate([emb.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(emb.encode(TEXTS, batch_size=4), one_by_one, atol=2e-6)


def test_token_passes_hold_whole_sequences_within_the_budget() -> None:
    assert token_passes([], 8) == [(0, 0)]
    assert token_passes([3, 4, 1, 9, 2, 2, 2, 2], 8) == [(0, 3), (3, 4), (4, 8)]
    lengths = [5, 1, 7, 3, 3, 8, 2]
    passes = token_passes(lengths, 8)
    assert [i for a, b in passes for i in range(a, b)] == list(range(len(lengths)))
    assert all(sum(lengths[a:b]) <= 8 or b - a == 1 for a, b in passes)


@pytest.mark.parametrize("name", ["bert", "mpnet"])
def test_a_batch_over_the_pass_budget_runs_in_passes_with_the_same_vectors(name, ggufs, monkeypatch) -> None:
    emb = Embedder.load(ggufs[(name, "f32")], backend="jit")
    texts = [t for t in TEXTS if t]
    whole = emb.encode(texts, batch_size=len(texts))
    monkeypatch.setattr(bert, "PASS_TOKENS", 12)
    ids = emb.tokenize(texts)
    assert len(token_passes(sorted(len(s) for s in ids), bert.PASS_TOKENS)) > 3
    np.testing.assert_allclose(emb.encode(texts, batch_size=len(texts)), whole, atol=2e-6)


def test_max_length_and_truncation(ggufs, checkouts) -> None:
    emb = Embedder.load(ggufs[("bert", "f32")], backend="numpy")
    assert emb.max_tokens == 48 and emb.dims == (64,)
    long_text = "hello " * 60
    with pytest.raises(InputTooLongError):
        emb.encode([long_text])
    ids = emb.tokenize([long_text], truncate=True)[0]
    assert len(ids) == 48 and ids[0] == 2 and ids[-1] == 3
    vec = emb.encode([long_text], truncate=True)
    ref = reference_embedding(checkouts["bert"], ids)
    assert float(vec[0] @ ref) > 0.99999


def test_prompts_of_the_file_are_used(checkouts, tmp_path) -> None:
    path = convert_checkout(checkouts["bert"], tmp_path / "e5.gguf", "f32", metadata={"prompts": "e5"})
    emb = Embedder.load(path, backend="numpy")
    assert emb.format_texts(["x"], "query") == ["query: x"]
    assert emb.format_texts(["x"], "document") == ["passage: x"]
    with pytest.raises(EmbedpipeError, match="title"):
        emb.format_texts(["x"], "document", titles=["t"])
    plain = Embedder.load(convert_checkout(checkouts["bert"], tmp_path / "none.gguf", "f32"), backend="numpy")
    assert plain.format_texts(["x"], "query") == ["x"]


def test_bad_bert_checkout_is_a_clear_error(checkouts, tmp_path) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(checkouts["bert"], root)
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps(dict(cfg, hidden_act="relu")))
    with pytest.raises(EmbedpipeError, match="hidden_act"):
        convert_checkout(root, tmp_path / "x.gguf", "f32")
    (root / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=3)))
    with pytest.raises(EmbedpipeError, match="missing tensors"):
        convert_checkout(root, tmp_path / "x.gguf", "f32")
    assert not (tmp_path / "x.gguf").exists()


def _emulated(product, extend):
    """``product`` (fp32 numpy) fed what the int8 kernels compute with: its input on the Q8_0
    grid, the ``extend`` blocks corrected by their residuals on theirs."""
    from embedpipe.codegen.encoder_fused import grid_reference

    def run(x: np.ndarray) -> np.ndarray:
        seen = grid_reference(x)
        if extend is not None:
            cols = extend.columns()
            seen[:, cols] += grid_reference(np.ascontiguousarray(x[:, cols] - seen[:, cols]))
        return product(seen)

    return run


@pytest.mark.parametrize("name", ["bert", "mpnet"])
def test_jit_q8_forward_is_the_extended_block_scheme(name, ggufs, monkeypatch) -> None:
    """The JIT Q8_0 forward (QKV and FFN-up on rows extended by their worst block's residual,
    the other products on plain int8 rows) equals the numpy oracle fed the same quantized
    activations; the extension picks the calibration's worst block of each product input."""
    monkeypatch.setattr(bert_extend, "EXTENDED_BLOCKS", 1)  # of the 2 blocks of these 64-wide models
    jit = Embedder.load(ggufs[(name, "q8_0")], backend="jit")
    oracle = Embedder.load(ggufs[(name, "q8_0")], backend="numpy")
    errors = bert_extend.BlockErrors()
    calibration = [s[: jit.max_tokens] for s in jit.tokenizer.encode_batch(list(bert_extend.CALIBRATION_TEXTS))]
    oracle.model._embed_pass(calibration, probe=errors)
    for lj, ln in zip(jit.model.layers, oracle.model.layers):
        assert ln.qkv_ext is None and ln.up_ext is None  # fp32 products: nothing to extend
        assert lj.qkv_ext.blocks == tuple(errors.worst((lj.il, "attn_qkv"), 1))
        assert lj.up_ext.blocks == tuple(errors.worst((lj.il, "ffn_up"), 1))
        ln.w_qkv, ln.w_up = _emulated(ln.w_qkv, lj.qkv_ext), _emulated(ln.w_up, lj.up_ext)
        ln.wo, ln.w_down = _emulated(ln.wo, None), _emulated(ln.w_down, None)
    texts = TEXTS + ["the quick brown fox " * 11]
    got, want = jit.encode(texts, batch_size=5), oracle.encode(texts, batch_size=5)
    assert (got.astype(np.float64) * want).sum(1).min() >= 0.999999


def test_a_warm_load_takes_the_calibrated_blocks_from_the_weight_cache(ggufs, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_WEIGHT_CACHE_DIR", str(tmp_path))
    cold = Embedder.load(ggufs[("mpnet", "q8_0")], backend="jit")
    picked = [(layer.qkv_ext.blocks, layer.up_ext.blocks) for layer in cold.model.layers]

    def no_calibration(mf):
        raise AssertionError("a warm load ran the calibration pass")

    monkeypatch.setattr(bert, "load_tokenizer", no_calibration)
    warm = Embedder.load(ggufs[("mpnet", "q8_0")], backend="jit")
    assert [(layer.qkv_ext.blocks, layer.up_ext.blocks) for layer in warm.model.layers] == picked
    np.testing.assert_array_equal(warm.encode(TEXTS), cold.encode(TEXTS))
    # a changed calibration recipe is another entry: calibrated again
    monkeypatch.setattr(bert_extend, "EXTENDED_BLOCKS", 1)
    with pytest.raises(AssertionError, match="calibration pass"):
        Embedder.load(ggufs[("mpnet", "q8_0")], backend="jit")
