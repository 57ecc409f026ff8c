"""Make the llama.cpp-converted tiny BERT fixture of tests/runtime/data (run in the torch venv).

A tiny random sentence-transformers BERT checkout (transformers ``BertModel``, 2 layers of
width 32, with the real bert-base-uncased WordPiece tokenizer: llama.cpp's converter refuses
tokenizers whose output it does not recognize, and this one it knows as ``bert-bge``; mean
pooling, Normalize) is converted by llama.cpp's own
``convert_hf_to_gguf.py`` (from a llama.cpp checkout: this script only runs it), and the
checkout's token ids and sentence-transformers vectors for a set of texts are recorded beside
the GGUF files, so that the test checks our loader on a file llama.cpp really wrote without
needing torch or llama.cpp::

    /tmp/torchvenv/bin/python scripts/make_llama_cpp_bert_fixture.py LLAMA_CPP_DIR TOKENIZER_DIR tests/runtime/data

LLAMA_CPP_DIR is a llama.cpp source tree (e.g. ``vendor/llama.cpp`` of the llama-cpp-python
sdist: ``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``); TOKENIZER_DIR
a checkout holding the bert-base-uncased tokenizer files (all-MiniLM-L6-v2's: ``embedpipe model
pull all-minilm-l6-v2`` leaves them under ``hf/`` beside the GGUF).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NAME = "tiny-bert-llama-cpp"
QUANTS = ("f16",)
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve UNBELIEVABLE",
    "東京 jumping!",
    "fox (the) [brown] <dog>",
    "[CLS] x [MASK] y [SEP]",
    "a\x00b\tc\u200bd\ufffd",
    "   spaced   out   ",
    "punctuation!!! ??? ...",
    "x" * 120 + " fox",
    "zzz" + "é" * 5,
]


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_checkout(root: Path, tokenizer_dir: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    root.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, root / name)
    vocab = (root / "vocab.txt").read_text(encoding="utf-8").splitlines()
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=48,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    model = BertModel(cfg).eval()
    with torch.no_grad():  # random LayerNorm affines and larger weights than the init, so nothing is trivial
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(0.15 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(root), safe_serialization=True)
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40, "do_lower_case": False}))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (root / "2_Normalize").mkdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("llama_cpp", type=Path, help="llama.cpp source tree holding convert_hf_to_gguf.py")
    ap.add_argument("tokenizer", type=Path, help="directory with the bert-base-uncased tokenizer files")
    ap.add_argument("out", type=Path, help="output directory (tests/runtime/data)")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    converter = args.llama_cpp / "convert_hf_to_gguf.py"
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / NAME
        build_checkout(ckpt, args.tokenizer, args.seed)
        for quant in QUANTS:
            out = args.out / f"{NAME}-{quant}.gguf"
            cmd = [sys.executable, str(converter), str(ckpt), "--outtype", quant, "--outfile", str(out)]
            subprocess.run(cmd, check=True)
        tok = AutoTokenizer.from_pretrained(str(ckpt))
        st = SentenceTransformer(str(ckpt), device="cpu")
        vectors = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
        record = {
            "made_by": "scripts/make_llama_cpp_bert_fixture.py LLAMA_CPP_DIR TOKENIZER_DIR tests/runtime/data"
            f" --seed {args.seed} (torch venv)",
            "converter_sha256": hashlib.sha256(converter.read_bytes()).hexdigest(),
            "texts": TEXTS,
            "ids": [tok(t)["input_ids"] for t in TEXTS],
            "tokenizer_json_sha256": hashlib.sha256((ckpt / "tokenizer.json").read_bytes()).hexdigest(),
            "vectors": [[float(x) for x in v] for v in vectors],
        }
        (args.out / f"{NAME}.json").write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
