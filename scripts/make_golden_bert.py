"""Golden token ids and embeddings for all-MiniLM-L6-v2 and all-mpnet-base-v2 (sentence-transformers fp32, CPU).

embedpipe's real-model tests for the BERT family (issue 13) compare its WordPiece tokenizer and
BERT/MPNet forward passes against these files. torch is never a dependency of embedpipe, so
this script runs in the bench-only torch venv:

    /tmp/torchvenv/bin/python scripts/make_golden_bert.py MINILM_CHECKOUT MPNET_CHECKOUT

The checkouts are the ones `embedpipe model pull all-minilm-l6-v2` / `all-mpnet-base-v2` verify
(under <cache>/models/<name>/hf/...). The script refuses to run if model.safetensors or
tokenizer.json differ from the registry's pins. It rewrites, in tests/runtime/golden/:

- bert_family_golden.json: every text (category, string), and per model: the ids of the
  checkout's tokenizer.json through HF `tokenizers` (no truncation, no padding), checked equal to
  what transformers' tokenizer gives; the number of tokens sentence-transformers feeds the model
  (truncated at max_seq_length); which texts have vectors; versions and SHA-256s.
- bert_family_golden.npz: float32 `<model>` arrays, row i = i-th vector text:
  SentenceTransformer.encode([text], normalize_embeddings=True), one text per call (no padding).

All text was written for this file (long texts are repeated sentences of our own).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "runtime" / "golden"
PINS = {
    "all-minilm-l6-v2": {
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    "all-mpnet-base-v2": {
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    },
}
SENTENCES = [
    "The harbour office opens at seven and the first ferry leaves twenty minutes later.",
    "A narrow-gauge railway climbs from the quay to the quarry villages in the hills.",
    "Visitors often ask why the lighthouse is painted in green and white bands.",
    "The town council keeps a ledger of every storm since the breakwater was built.",
    "Children learn to row in the sheltered basin behind the old grain warehouse.",
    "A tidal clock on the chapel wall shows the height of the water instead of the hour.",
]
WORDS = [
    "harbour",
    "ferry",
    "quay",
    "lantern",
    "viaduct",
    "ledger",
    "estuary",
    "signal",
    "granary",
    "tide",
    "unbelievably",
    "reconstruction",
    "electroencephalography",
    "naïve",
    "café",
    "résumé",
    "Zürich",
]


def texts() -> list[tuple[str, str]]:
    rng = random.Random(13)
    out: list[tuple[str, str]] = []
    add = lambda cat, items: out.extend((cat, t) for t in items)
    add(
        "plain",
        SENTENCES
        + [
            "Hello, world!",
            "search engines rank documents by relevance",
            "How do I reset my password?",
            "the cat sat on the mat",
            "a",
            "I",
            "x y z",
        ],
    )
    add("empty", ["", " ", "\t\n", "\u3000"])
    add(
        "accents",
        [
            "Crème brûlée à la française",
            "ÀÉÎÕÜ àéîõü ÇÑ çñ",
            "São Paulo e Brasília",
            "Ångström Øresund Æsir",
            "Dvořák, Čapek a Škoda",
            "Łódź i Kraków",
            "İstanbul ıi İI",
            "Straße STRASSE ß ẞ",
            "e\u0301 (combining acute) vs é",
            "ﬁ ﬂ ligatures ﬀ",
            "Ⅻ ½ ² ③ ™",
            "Ǆ ǅ ǆ",
            "ΑΒΓ αβγ Ωμέγα",
            "Москва — столица России",
            "naïve coöperate façade",
            "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕",
        ],
    )
    add(
        "cjk",
        [
            "東京は日本の首都です",
            "我爱北京天安门",
            "한국어 문장입니다",
            "中文English混合text",
            "漢字かなカナ交じり文",
            "日本語のテキスト、句読点。",
            "㐀㐁 (CJK Extension A) 𠀀 (Extension B)",
            "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ １２３",
            "ภาษาไทย ไม่มีช่องว่าง",
            "العربية من اليمين",
            "עברית",
            "हिन्दी भाषा",
        ],
    )
    add(
        "emoji",
        [
            "emoji 😀👍🏽 test",
            "👨‍👩‍👧‍👦 family",
            "🇫🇷🇩🇪 flags",
            "I ❤️ NY",
            "✅ done ❌ failed",
            "😀😀😀😀😀",
            "keycap 1️⃣ #️⃣",
            "🏳️‍🌈",
            "text🙂text",
        ],
    )
    add(
        "punctuation",
        [
            "!!!...???",
            "---___===+++",
            "(((nested)))",
            "a.b.c.d",
            "e-mail's don't",
            "$100.00 & 50%",
            "C++ / C# / F#",
            "\"quoted\" 'single' «guillemets» „low“",
            "…—–‐",
            "@user #hashtag",
            "http://example.com/path?q=1&r=2#frag",
            "foo@bar.baz",
            "1,000,000.5",
            "[brackets] {braces} <angles>",
            "~`^|\\",
            "¿Qué? ¡Sí!",
            "。、！？",
            ".",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ],
    )
    add(
        "control",
        [
            "a\x00b",
            "bell\x07char",
            "zero\u200bwidth",
            "soft\u00adhyphen",
            "bom\ufeffmark",
            "nul\x00\x00",
            "tab\tand\vvertical",
            "line\u2028sep",
            "rtl\u200fmark",
            "del\x7fchar",
            "esc\x1b[31mred",
            "\ufffd replacement",
            "nbsp\u00a0space",
            "private\ue000use",
            "\x01\x02\x03",
        ],
    )
    add(
        "long_word",
        [
            "x" * 150,
            "supercalifragilistic" * 8,
            "a" * 99,
            "a" * 100,
            "a" * 101,
            "ab" * 60 + " short",
            "word " + "é" * 120,
            "漢" * 150,
            "1234567890" * 15,
        ],
    )
    add(
        "whitespace",
        [
            "  leading",
            "trailing  ",
            "  spaced\t\ttabs\n\nnew  ",
            "many     spaces     here",
            "\n\n\nnewlines\n\n",
            "\r\nwindows\r\nlines",
            "mixed \t \n \r whitespace",
            "\u2003em\u2002en\u2009thin",
        ],
    )
    add(
        "special_literal",
        [
            "[CLS] hi [SEP]",
            "[MASK] token",
            "[UNK] unknown",
            "[PAD]",
            "<s> </s>",
            "<mask> x<mask>y",
            "<pad> <unk> <UNK>",
            "[cls] lower",
            "##suffix",
            "[unused1]",
            "<s>nested</s>",
        ],
    )
    add(
        "numbers",
        [
            "3.14159",
            "2026-11-29T16:00:00Z",
            "v1.2.3-beta",
            "0x1F 0b1010",
            "1e-12",
            "+44 20 7946 0000",
            "½ + ¼ = ¾",
            "٣٤٥ Arabic digits",
            "१२३ Devanagari digits",
        ],
    )
    add(
        "code",
        [
            "def f(x): return x**2",
            "SELECT * FROM t WHERE a = 1;",
            '<div class="x">hi</div>',
            "for (int i = 0; i < n; ++i) {}",
            '{"key": [1, 2, 3]}',
            "camelCaseIdentifier snake_case_name",
        ],
    )
    for _ in range(60):
        n = rng.randint(3, 14)
        add("random_words", [" ".join(rng.choice(WORDS) for _ in range(n)) + rng.choice([".", "?", "!", ""])])
    body = " ".join(SENTENCES)
    lengths = [40, 120, 250, 254, 255, 256, 300, 382, 383, 384, 500, 900]
    add("long", [(body + " ") * (1 + n // 90) for n in lengths[:2]])
    for target in lengths:  # texts whose token counts land at and around both max lengths
        add("long", [" ".join(["lantern"] * (target - 2))])
    return out


VECTORS_PER_CATEGORY = 5
VECTOR_CATEGORIES = {
    "plain",
    "empty",
    "accents",
    "cjk",
    "emoji",
    "punctuation",
    "control",
    "long_word",
    "whitespace",
    "special_literal",
    "long",
    "code",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def main(checkouts: dict[str, Path]) -> None:
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    items = texts()
    meta = {
        "texts": [{"category": c, "text": t} for c, t in items],
        "models": {},
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
    }
    seen: dict[str, int] = {}
    vector_rows = []
    for i, (cat, _) in enumerate(items):  # the first few of each category, every long text
        seen[cat] = seen.get(cat, 0) + 1
        if cat == "long" or (cat in VECTOR_CATEGORIES and seen[cat] <= VECTORS_PER_CATEGORY):
            vector_rows.append(i)
    arrays = {}
    for name, root in checkouts.items():
        for rel, want in PINS[name].items():
            got = sha256(root / rel)
            if got != want:
                sys.exit(f"{root / rel}: SHA-256 {got} is not the pinned {want}")
        hf = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
        hf.no_truncation()
        hf.no_padding()
        model = SentenceTransformer(str(root), device="cpu")
        ids = [hf.encode(t).ids for _, t in items]
        via_transformers = [model.tokenizer(t, truncation=False)["input_ids"] for _, t in items]
        if ids != via_transformers:
            bad = next(i for i in range(len(ids)) if ids[i] != via_transformers[i])
            sys.exit(f"{name}: tokenizers and transformers disagree on text {bad}: {items[bad][1]!r}")
        st_lengths = [int(model.tokenize([t])["attention_mask"].sum()) for _, t in items]
        vecs = np.stack(
            [
                model.encode([items[i][1]], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)[0]
                for i in vector_rows
            ]
        ).astype(np.float32)
        arrays[name] = vecs
        meta["models"][name] = {
            "ids": ids,
            "st_n_tokens": st_lengths,
            "vector_rows": vector_rows,
            "max_seq_length": model.max_seq_length,
            "sha256": dict(PINS[name]),
        }
        print(f"{name}: {len(ids)} texts, {len(vector_rows)} vectors, max tokens {max(map(len, ids))}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bert_family_golden.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    np.savez_compressed(OUT_DIR / "bert_family_golden.npz", **arrays)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main({"all-minilm-l6-v2": Path(sys.argv[1]), "all-mpnet-base-v2": Path(sys.argv[2])})
