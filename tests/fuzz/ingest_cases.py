"""Bad corpora for the ingest readers: byte-mutated files of every format plus the shapes the
issue names (binary ids that are not UTF-8, non-object JSON lines, empty inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.fuzz.mutate import byte_mutation
from tests.fuzz.seeds import Seeds


def _special(out: Path, k: int) -> tuple[Path, str]:
    out.mkdir(parents=True, exist_ok=True)
    which = k % 8
    if which == 0:
        p = out / "binary-ids.parquet"
        pq.write_table(
            pa.table({"id": pa.array([b"ok", b"\xff\xfe", b"\xc3"], pa.binary()), "text": ["one", "two", "three"]}), p
        )
        return p, "binary id, invalid UTF-8"
    if which == 1:
        p = out / "empty.jsonl"
        p.write_bytes(b"")
        return p, "empty jsonl"
    if which == 2:
        p = out / "empty.csv"
        p.write_bytes(b"")
        return p, "empty csv"
    if which == 3:
        p = out / "header-only.csv"
        p.write_bytes(b"id,text\n")
        return p, "header-only csv"
    if which == 4:
        p = out / "zero-rows.parquet"
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), p)
        return p, "zero-row parquet"
    if which == 5:
        p = out / "mixed.jsonl"
        p.write_bytes(
            b'{"id": "a", "text": "ok"}\n[1,2]\n"str"\n{"id": "b", "text": "caf\xff"}\nnull\n'
            b'{"id": {"x": 1}, "text": "dict id"}\n'
        )
        return p, "non-object lines, raw 0xff"
    if which == 6:
        p = out / "empty.parquet"
        p.write_bytes(b"")
        return p, "empty parquet"
    p = out / "dup.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a", "c", "b"], "text": ["1", "2", "3", "4", "5"]}), p)
    return p, "duplicate ids"


def ingest_case(seeds: Seeds, rng: np.random.Generator, out: Path, k: int) -> dict:
    model = str(seeds.models[0])
    if rng.random() < 0.35:
        path, what = _special(out, k)
        return {
            "target": "ingest",
            "kind": "ingest_special",
            "what": what,
            "path": str(path),
            "model": model,
            "id_col": "id",
        }
    src = seeds.corpora[int(rng.integers(len(seeds.corpora)))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / src.name
    data = src.read_bytes()
    for _ in range(int(rng.integers(1, 4))):
        data = byte_mutation(data, rng)
    path.write_bytes(data)
    return {
        "target": "ingest",
        "kind": "ingest_bytes",
        "path": str(path),
        "model": model,
        "id_col": "id",
        "seed": src.name,
    }
