"""Golden token ids and embeddings for EmbeddingGemma-300M from sentence-transformers (fp32, CPU).

embedpipe's real-model tests (tests/runtime/test_golden.py) compare its tokenizer and forward pass against these
files. torch is never a dependency of embedpipe, so this script runs in a separate venv:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 && /tmp/torchvenv/bin/pip install sentence-transformers
    /tmp/torchvenv/bin/python scripts/make_golden.py [CHECKOUT_DIR]   # default /tmp/egemma/model_download

CHECKOUT_DIR is the sentence-transformers checkout of google/embeddinggemma-300m (the files
`embedpipe model pull` verifies against pinned SHA-256s). The script refuses to run if a model
file's SHA-256 differs from the pinned value. It rewrites, in tests/runtime/golden/:

- embeddinggemma_golden.npz: float32 arrays, row i = text i of the JSON
    query_768, query_256        encode(texts, prompt_name="query", normalize_embeddings=True
                                [, truncate_dim=256])
    document_768, document_256  same with prompt_name="document" ("title: none | text: ")
    document_titled_768, document_titled_256   the "titled" entries, encoded as the full string
                                "title: {title} | text: {text}" without a further prompt
- embeddinggemma_golden.json: every text with its category, the exact prompted strings, the
  HF tokenizer's ids for each (model.tokenizer(prompted)["input_ids"], which is what
  sentence-transformers feeds the model: BOS 2 ... EOS 1), token counts, the library versions
  and the model files' SHA-256s, plus a sliding-window diagnostic: for documents longer than
  257 tokens, the cosine to the golden of embeddings recomputed with an explicit sliding mask
  |i-j| <= 256 (must be 1.0: this is the reference semantics), |i-j| < 512 and no window.

Each text is encoded alone (batch_size=1) so no padding enters the reference. All text was
written for this file; the long texts are built deterministically from our own sentences.
Texts in the category "special_literal" spell special tokens. The HF tokenizer maps "<bos>"
(a SentencePiece *control* piece) inside the text to id 2, which plain SentencePiece on
tokenizer.model does not (it gives "<", "bos", ">"); "<start_of_turn>"/"<end_of_turn>" are
*user-defined* pieces (105/106) that both produce. Every other text tokenizes identically with
plain SentencePiece (ids = [2] + sp.encode(prompted) + [1]). Tests decide how to treat the
"<bos>" row.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "runtime" / "golden"
DEFAULT_CHECKOUT = "/tmp/egemma/model_download"
QUERY_PROMPT = "task: search result | query: "
DOC_PROMPT = "title: none | text: "
TITLED_PROMPT = "title: {title} | text: "
PINNED_SHA256 = {
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "tokenizer.model": "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c",
    "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
}
RECORDED_FILES = ("tokenizer.json", "config.json", "config_sentence_transformers.json")

# Our own sentences for the long texts (a fictional harbour town and its rail line).
EN_SENTENCES = [
    "The harbour office opens at seven and the first ferry leaves twenty minutes later.",
    "Fishermen sort the morning catch on long steel tables beside the customs shed.",
    "A narrow-gauge railway climbs from the quay to the quarry villages in the hills.",
    "Its timetable was rewritten last spring after the viaduct repairs were finished.",
    "Visitors often ask why the lighthouse is painted in green and white bands.",
    "The answer is practical: the colours stand out against both snow and heather.",
    "On market days the square fills with stalls selling cheese, rope and smoked fish.",
    "The town council keeps a ledger of every storm since the breakwater was built.",
    "In the worst year the sea overtopped the wall eleven times between October and March.",
    "Engineers proposed raising the wall by two metres, but the budget allowed only one.",
    "Children learn to row in the sheltered basin behind the old grain warehouse.",
    "The warehouse itself now holds a library, a bakery and a small cinema.",
    "Every evening the signal box sends a lantern message to the last train of the day.",
    "Retired drivers volunteer at the museum and explain how the steam brakes worked.",
    "A tidal clock on the chapel wall shows the height of the water instead of the hour.",
    "Researchers from the university measure salt levels in the estuary each week.",
    "Their reports suggest that the eelgrass beds are slowly recovering.",
    "The ferry company plans to replace its diesel vessels with battery-electric boats.",
    "Charging points will be installed on the pier before the summer season starts.",
    "Local cooks argue about whether mussels taste better with cider or with white wine.",
    "The quarry closed decades ago, yet its blue slate still covers most of the roofs.",
    "Hikers follow the disused incline from the quarry down to the water's edge.",
    "At low tide a causeway appears and leads to a tiny island with a ruined hermitage.",
    "Signs warn walkers to return before the water rises over the stones again.",
]
RU_SENTENCES = [
    "Утром в порту пахнет солью, канатами и свежим хлебом из пекарни у причала.",
    "Первый паром отходит в семь двадцать, и на нём почти всегда много школьников.",
    "Узкоколейная железная дорога поднимается от набережной к деревням у каменоломни.",
    "Смотритель маяка ведёт журнал погоды уже тридцать лет без единого перерыва.",
    "По субботам на площади продают сыр, копчёную рыбу и вязаные свитера.",
    "Инженеры предлагают поднять волнолом, но бюджет города пока этого не позволяет.",
    "Дети учатся грести в тихой гавани за старым зерновым складом.",
    "Вечером последний поезд подаёт сигнал фонарём, и стрелочник отвечает ему тем же.",
    "Учёные из университета каждую неделю измеряют солёность воды в устье реки.",
    "Во время отлива открывается дамба, ведущая к маленькому острову с руинами часовни.",
]
CODE_BLOCK = '''def moving_average(values: list[float], window: int) -> list[float]:
    """Return the trailing moving average of `values` over `window` items."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
'''


def long_text(sentences: list[str], target_chars: int, seed: int, para_every: int = 5) -> str:
    """Deterministic pseudo-random arrangement of our own sentences, in paragraphs."""
    rng = random.Random(seed)
    parts: list[str] = []
    n = 0
    while sum(len(p) + 1 for p in parts) < target_chars:
        parts.append(rng.choice(sentences))
        n += 1
        if n % para_every == 0:
            parts[-1] += "\n\n"
    return " ".join(parts).replace("\n\n ", "\n\n").strip()


def long_code(target_chars: int) -> str:
    blocks = []
    i = 0
    while sum(len(b) for b in blocks) < target_chars:
        blocks.append(CODE_BLOCK.replace("moving_average", f"moving_average_{i}"))
        i += 1
    return "\n\n".join(blocks)


def golden_texts() -> list[tuple[str, str]]:
    """(category, text) pairs. Order is the row order of every array in the .npz."""
    return [
        ("short", "hello"),
        ("short", "What is the capital of France?"),
        ("short", "save parking spot with location and notes"),
        ("short", "How do I reset my router password?"),
        ("short", "a"),
        ("mixed_case", "MiXeD CaSe WoRdS, camelCaseIdentifiers, snake_case_names and SHOUTING LETTERS"),
        ("mixed_case", "iPhone vs ANDROID vs macOS: WHICH one Should I Buy in 2025?"),
        ("numbers", "The invoice total was 1,234,567.89 EUR on 2024-03-15; order #00042 shipped 3.14159 km."),
        ("numbers", "0 1 2 3 4 5 6 7 8 9 10 100 1000 10000 100000 1000000 -42 +7 1e-9 0x1F 3/4 50%"),
        ("url", "See https://example.com/path/to/page?query=embedding&lang=en#section-2 for details."),
        (
            "url",
            "http://localhost:8080/api/v1/items?id=17 and ftp://files.example.org/pub/data.tar.gz mailto:someone@example.net",
        ),
        ("emoji", "I love pizza 🍕🍕 and rockets 🚀!"),
        ("emoji", "👩‍💻 is coding, 🇯🇵 is a flag, 👍🏽 has a skin tone, ❤️ has a variation selector"),
        ("emoji", "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘"),
        ("code", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"),
        ("code", "SELECT id, name FROM users WHERE created_at >= '2024-01-01' ORDER BY name LIMIT 10;"),
        ("code", "for (int i = 0; i < n; ++i) {\n\tsum += x[i] * y[i];\n}\nreturn sum;"),
        ("code", "const f = async (url) => { const r = await fetch(url); return r.ok ? r.json() : null; };"),
        ("whitespace", "tabs\tbetween\twords\tand\t\ttwo\t\t\tthree"),
        ("whitespace", "multiple  spaces   between    words     here"),
        ("whitespace", "line one\nline two\n\nline four\n\n\n\nline eight"),
        ("whitespace", "   leading and trailing spaces   "),
        ("whitespace", " \t\n \t\n  "),
        ("whitespace", " "),
        ("whitespace", "\n"),
        ("whitespace", "windows\r\nline\r\nendings"),
        ("whitespace", "mixed \t \n\t  whitespace\u00a0with a no-break space and a\u2003em space"),
        ("empty", ""),
        ("chinese", "今天天气很好，我们去公园散步吧。港口的渡轮每天早上七点出发。"),
        ("arabic", "يفتح مكتب الميناء في الساعة السابعة صباحاً، ويغادر أول عبّارة بعد عشرين دقيقة."),
        ("hindi", "बंदरगाह कार्यालय सुबह सात बजे खुलता है और पहली नौका बीस मिनट बाद निकलती है।"),
        ("russian", "Офис порта открывается в семь утра, а первый паром уходит через двадцать минут."),
        ("japanese", "港の事務所は朝七時に開き、最初のフェリーは二十分後に出発します。カタカナとひらがなも混ぜます。"),
        ("korean", "항구 사무소는 아침 일곱 시에 문을 열고 첫 번째 배는 이십 분 뒤에 떠납니다."),
        ("greek", "Το γραφείο του λιμανιού ανοίγει στις επτά το πρωί."),
        ("mixed_script", "Embedding модели 模型 نماذج मॉडल モデル models — all in one line ✓"),
        ("unicode", "café naïve façade cafe\u0301 ＡＢＣ１２３ ﬁ ligature Ω ℃ ½ ²"),
        ("unicode", "rare characters: 𓀀 𠀋 \u200b zero-width space and control \x07 bell"),
        ("repetition", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("repetition", "!!!!!!!!!!???????..........----------==========__________"),
        ("medium", long_text(EN_SENTENCES, 900, seed=1)),
        ("long", long_text(EN_SENTENCES, 3400, seed=2)),
        ("long", long_text(EN_SENTENCES, 5000, seed=3)),
        ("long", long_text(EN_SENTENCES, 7400, seed=4)),
        ("long", long_text(RU_SENTENCES, 4200, seed=5)),
        ("long", long_code(3200)),
        ("long", long_text(EN_SENTENCES, 3000, seed=6).replace(". ", ".\t  \n   ")),
        ("special_literal", "<bos>text that spells a special token"),
        ("special_literal", "<start_of_turn>user\nhello<end_of_turn>"),
    ]


def titled_texts() -> list[tuple[str, str]]:
    """(title, text) pairs for the "title: {title} | text: " document prompt."""
    return [
        ("Harbour timetable", "The first ferry leaves twenty minutes after the office opens."),
        ("Parking", "save parking spot with location and notes"),
        ("Порт и паром", "Первый паром уходит в семь двадцать. 🚢"),
    ]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def token_ids(model, prompted: str) -> list[int]:
    ids = list(model.tokenizer(prompted)["input_ids"])
    if ids[0] != 2 or ids[-1] != 1:
        raise SystemExit(f"tokenizer did not add BOS 2 / EOS 1 to {prompted[:40]!r}: {ids[:3]}…")
    fed = model.tokenize([prompted])["input_ids"][0].tolist()
    if fed != ids:
        raise SystemExit(f"sentence-transformers feeds different ids for {prompted[:40]!r}")
    return ids


# Sliding-layer key visibility as a function of |i - j|. The config says sliding_window = 512,
# but for bidirectional models transformers turns it into 512 // 2 + 1 = 257 with an exclusive
# bound (configuration_gemma3.__post_init__), i.e. |i - j| <= 256: the same as llama.cpp's
# LLAMA_SWA_TYPE_SYMMETRIC (n_swa / 2). The other two are wrong readings kept as a diagnostic.
WINDOWS = {
    "le_256": lambda dist: dist <= 256,
    "lt_512": lambda dist: dist < 512,
    "none": lambda dist: dist >= 0,
}


def embed_with_window(model, ids: list[int], window: str) -> np.ndarray:
    """768-d embedding of one id sequence with an explicit sliding-layer mask (diagnostic).

    Same modules as SentenceTransformer.encode (transformer, mean pooling over all tokens,
    dense 768->3072->768, L2 normalize); only the sliding layers' mask is ours."""
    import torch

    pos = torch.arange(len(ids))
    dist = (pos[:, None] - pos[None, :]).abs()
    neg = torch.finfo(torch.float32).min
    sliding = torch.where(WINDOWS[window](dist), 0.0, neg)[None, None].float()
    masks = {"full_attention": torch.zeros_like(sliding), "sliding_attention": sliding}
    with torch.no_grad():
        h = model[0].auto_model(input_ids=torch.tensor([ids]), attention_mask=masks).last_hidden_state
        v = model[3].linear(model[2].linear(h.mean(dim=1)))
        v = torch.nn.functional.normalize(v, dim=-1)
    return v[0].numpy().astype(np.float32)


def window_check(model, records: list[dict], golden: np.ndarray) -> dict:
    """Cosine against the golden document_768 row of each window definition, on the document
    inputs longer than 257 tokens (where the window bites). "le_256" must reproduce encode()
    (checked on the first such row); the others show how far a wrong window lands."""
    rows = [r["index"] for r in records if r["document_n_tokens"] > 257]
    cos: dict[str, list[float]] = {"le_256": [], "lt_512": [], "none": []}
    for k, i in enumerate(rows):
        for w in WINDOWS:
            if w == "le_256" and k > 0:
                continue
            v = embed_with_window(model, records[i]["document_ids"], w)
            cos[w].append(round(float(v @ golden[i]), 7))
    if cos["le_256"][0] < 0.99999:
        raise SystemExit(f"explicit |i-j| <= 256 mask does not reproduce encode(): {cos}")
    return {"rows": rows, "n_tokens": [records[i]["document_n_tokens"] for i in rows], "cosine_vs_document_768": cos}


def encode(model, texts: list[str], **kw) -> np.ndarray:
    emb = model.encode(
        texts, batch_size=1, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False, **kw
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def main() -> None:
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    checkout = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CHECKOUT)
    shas = {name: sha256_file(checkout / name) for name in (*PINNED_SHA256, *RECORDED_FILES)}
    bad = {n: s for n, s in shas.items() if n in PINNED_SHA256 and s != PINNED_SHA256[n]}
    if bad:
        raise SystemExit(f"{checkout}: files differ from the pinned SHA-256s: {sorted(bad)}")

    torch.manual_seed(0)
    model = SentenceTransformer(str(checkout), device="cpu").float().eval()
    entries = golden_texts()
    texts = [t for _, t in entries]
    titled = titled_texts()
    titled_strings = [TITLED_PROMPT.format(title=ti) + tx for ti, tx in titled]

    records = []
    for i, (cat, text) in enumerate(entries):
        q, d = QUERY_PROMPT + text, DOC_PROMPT + text
        qi, di = token_ids(model, q), token_ids(model, d)
        records.append(
            {
                "index": i,
                "category": cat,
                "text": text,
                "query_prompted": q,
                "document_prompted": d,
                "query_ids": qi,
                "document_ids": di,
                "query_n_tokens": len(qi),
                "document_n_tokens": len(di),
            }
        )
    titled_records = []
    for i, ((title, text), s) in enumerate(zip(titled, titled_strings)):
        ids = token_ids(model, s)
        titled_records.append(
            {
                "index": i,
                "title": title,
                "text": text,
                "document_prompted": s,
                "document_ids": ids,
                "document_n_tokens": len(ids),
            }
        )

    t0 = time.time()
    arrays = {
        "query_768": encode(model, texts, prompt_name="query"),
        "query_256": encode(model, texts, prompt_name="query", truncate_dim=256),
        "document_768": encode(model, texts, prompt_name="document"),
        "document_256": encode(model, texts, prompt_name="document", truncate_dim=256),
        "document_titled_768": encode(model, titled_strings),
        "document_titled_256": encode(model, titled_strings, truncate_dim=256),
    }
    # The prompt_name path must be the plain concatenation (include_prompt=True pooling).
    check = encode(model, [records[2]["query_prompted"]])
    if float(check[0] @ arrays["query_768"][2]) < 0.999999:
        raise SystemExit("prompt_name='query' differs from encoding the prompted string")
    elapsed = time.time() - t0
    window_info = window_check(model, records, arrays["document_768"])

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT_DIR / "embeddinggemma_golden.npz", **arrays)
    n_tok = [r["document_n_tokens"] for r in records] + [r["query_n_tokens"] for r in records]
    meta = {
        "description": "EmbeddingGemma-300M golden data from sentence-transformers, fp32, CPU, "
        "batch_size=1, normalize_embeddings=True; see scripts/make_golden.py",
        "regenerate": "/tmp/torchvenv/bin/python scripts/make_golden.py /path/to/checkout",
        "prompts": {"query": QUERY_PROMPT, "document": DOC_PROMPT, "document_titled": TITLED_PROMPT},
        "bos_id": 2,
        "eos_id": 1,
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "n_texts": len(records),
        "n_tokens_total": int(sum(n_tok)),
        "max_tokens": int(max(n_tok)),
        "encode_seconds": round(elapsed, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "numpy": np.__version__,
            "attn_implementation": model[0].auto_model.config._attn_implementation,
        },
        "model_files_sha256": shas,
        "sliding_window": {
            "config_sliding_window": 512,
            "effective_in_transformers": model[0].auto_model.config.sliding_window,
            "reference_semantics": "on sliding layers key j is visible from query i iff "
            "|i - j| <= 256 (transformers: 512 // 2 + 1 = 257, exclusive; "
            "llama.cpp LLAMA_SWA_TYPE_SYMMETRIC: n_swa / 2, inclusive)",
            "check": window_info,
        },
        "texts": records,
        "titled": titled_records,
    }
    (OUT_DIR / "embeddinggemma_golden.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"{len(records)} texts + {len(titled_records)} titled; max {max(n_tok)} tokens; "
        f"encode {elapsed:.0f}s -> {OUT_DIR}"
    )


if __name__ == "__main__":
    main()
