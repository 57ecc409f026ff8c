"""GGUF mutators: raw bytes in the header, extreme counts and lengths, wrong metadata, edited
tensor tables, same-size damage to the weights."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from tests.fuzz.gguf_doc import ARRAY, KV, STRING, GGUFDoc
from tests.fuzz.mutate import INTERESTING_U64, byte_mutation
from tests.fuzz.seeds import Seeds

# ----------------------------------------------------------------------------- GGUF


def _header_end(doc: GGUFDoc) -> int:
    return len(doc.serialize()) - len(doc.data)


def gguf_bytes(seed: Path, rng, out: Path) -> dict:
    buf = seed.read_bytes()
    doc = GGUFDoc.read(seed)
    end = _header_end(doc)
    lo, hi = (0, end) if rng.random() < 0.8 else (end, len(buf))
    out.write_bytes(byte_mutation(buf, rng, lo, hi))
    return {"target": "gguf", "kind": "gguf_bytes"}


def gguf_count(seed: Path, rng, out: Path) -> dict:
    """A length or count field (string length, array count, tensor dim, offset) set to an extreme."""
    doc = GGUFDoc.read(seed)
    buf = bytearray(doc.serialize())
    names = sorted(doc.positions)
    name = names[int(rng.integers(len(names)))]
    pos = doc.positions[name]
    v = INTERESTING_U64[int(rng.integers(len(INTERESTING_U64)))]
    if rng.random() < 0.3:
        v = struct.unpack_from("<Q", buf, pos)[0] + int(rng.integers(-3, 4))
    buf[pos : pos + 8] = struct.pack("<Q", v & (2**64 - 1))
    out.write_bytes(bytes(buf))
    return {"target": "gguf", "kind": "gguf_count", "field": name, "value": v}


_SCALAR_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12]


def _weird_value(kv: KV, rng) -> KV:
    choice = int(rng.integers(0, 9))
    if choice == 0:  # same type, extreme value
        extremes = {
            0: [0, 255],
            1: [-128, 0],
            2: [0, 65535],
            3: [-1, 0],
            4: [0, 2**32 - 1, 10**7],
            5: [-1, 0, 2**31 - 1],
            6: [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45],
            7: [False, True],
            10: [0, 2**64 - 1, 10**7],
            11: [-1, 0, 2**63 - 1],
            12: [0.0, float("nan"), float("-inf")],
        }
        vals = extremes.get(kv.vtype)
        if vals:
            return KV(kv.key, kv.vtype, vals[int(rng.integers(len(vals)))])
    if choice == 1:
        return KV(kv.key, STRING, b"12")
    if choice == 2:
        return KV(kv.key, 6, float(rng.choice([0.5, -0.0, float("nan"), 1e30])))
    if choice == 3:
        return KV(kv.key, ARRAY, [1, 2], 4)
    if choice == 4:
        return KV(kv.key, 7, True)
    if choice == 5:
        return KV(kv.key, 11, int(rng.choice([-1, 0, 2**40, -(2**62)])))
    if choice == 6 and kv.vtype == ARRAY and kv.item_type == STRING:
        vals = list(kv.value)
        i = int(rng.integers(len(vals)))
        vals[i] = rng.choice([b"\xff\xfe", b"", b"\xc3", b"a" * 5000, b"\x00"])
        return KV(kv.key, ARRAY, vals, STRING)
    if choice == 7 and kv.vtype == ARRAY:
        vals = list(kv.value)
        cut = int(rng.integers(0, len(vals) + 1))
        return KV(kv.key, ARRAY, vals[:cut] if rng.random() < 0.7 else vals + vals[:3], kv.item_type)
    if choice == 8 and kv.vtype == STRING:
        return KV(kv.key, STRING, rng.choice([b"\xff\xfe\xfd", b"", b"bert", b"x" * 100000, b"gpt2"]))
    return KV(kv.key, int(rng.choice(_SCALAR_TYPES)), 3)


def gguf_meta(seed: Path, rng, out: Path) -> dict:
    """Well-formed GGUF, wrong metadata: a value of the wrong type or range, a key missing."""
    doc = GGUFDoc.read(seed)
    i = int(rng.integers(len(doc.kvs)))
    kv = doc.kvs[i]
    what = "delete"
    r = rng.random()
    if r < 0.15:
        del doc.kvs[i]
    elif r < 0.22:
        doc.kvs.append(KV("general.alignment", 4, int(rng.choice([0, 1, 3, 8, 64, 2**31, 48]))))
        what = "alignment"
        doc.alignment = max(1, doc.kvs[-1].value) if doc.kvs[-1].value & (doc.kvs[-1].value - 1) == 0 else 32
    else:
        new = _weird_value(kv, rng)
        if new.vtype in (0, 2, 4, 10, 7) and isinstance(new.value, int) and new.value < 0:
            new = KV(new.key, 11, new.value)
        doc.kvs[i] = new
        what = f"type {new.vtype} value {str(new.value)[:40]!r}"
    out.write_bytes(doc.serialize())
    return {"target": "gguf", "kind": "gguf_meta", "key": kv.key, "change": what}


def gguf_tensor(seed: Path, rng, out: Path) -> dict:
    """Tensor table edits: missing, duplicated, reshaped, retyped, moved (unaligned/overlapping)."""
    doc = GGUFDoc.read(seed)
    i = int(rng.integers(len(doc.tensors)))
    t = doc.tensors[i]
    kind = int(rng.integers(0, 8))
    if kind == 0:
        del doc.tensors[i]
        change = "removed"
    elif kind == 1:
        doc.tensors.append(type(t)(t.name, list(t.dims), t.ttype, t.offset))
        change = "duplicated"
    elif kind == 2:
        j = int(rng.integers(len(t.dims)))
        t.dims[j] = int(rng.choice([0, 1, t.dims[j] * 2, t.dims[j] + 1, 2**32, 2**63 - 1, 10**7]))
        change = f"dim {j} = {t.dims[j]}"
    elif kind == 3:
        t.dims = t.dims[::-1] if len(t.dims) > 1 else t.dims + [1]
        change = "dims swapped"
    elif kind == 4:
        t.ttype = int(rng.choice([1, 8, 10, 12, 14, 30, 99, 2**31]))
        change = f"type {t.ttype}"
    elif kind == 5:
        other = doc.tensors[int(rng.integers(len(doc.tensors)))]
        t.offset = int(
            rng.choice(
                [t.offset + 1, t.offset + 4, other.offset, other.offset + 32, len(doc.data), len(doc.data) - 32, 2**63]
            )
        )
        change = f"offset {t.offset}"
    elif kind == 6:
        t.name = rng.choice(
            [
                "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
                "x" * 70000,
                "blk.0.attn_q.weight",
                "token_embd.weight",
                "",
            ]
        )
        change = "renamed"
    else:
        t.dims = t.dims + [1] * int(rng.integers(1, 4))
        change = f"{len(t.dims)} dims"
    out.write_bytes(doc.serialize())
    return {"target": "gguf", "kind": "gguf_tensor", "tensor": t.name[:60], "change": change}


def gguf_weights(seed: Path, rng, out: Path) -> dict:
    """Same-size corruption of the weights (a bad disk under the cached model)."""
    doc = GGUFDoc.read(seed)
    end = _header_end(doc)
    b = bytearray(doc.serialize())
    n = int(rng.choice([4, 64, 4096, 65536]))
    pos = int(rng.integers(end, max(end + 1, len(b) - n)))
    fill = rng.choice([b"\xff", b"\x00", b"\x7f"])
    b[pos : pos + n] = fill * len(b[pos : pos + n])
    out.write_bytes(bytes(b))
    return {"target": "gguf", "kind": "gguf_weights", "bytes": n, "fill": fill.hex()}


GGUF_MUTATORS: dict[str, Callable] = {
    "gguf_bytes": gguf_bytes,
    "gguf_count": gguf_count,
    "gguf_meta": gguf_meta,
    "gguf_tensor": gguf_tensor,
    "gguf_weights": gguf_weights,
}


def gguf_case(seeds: Seeds, rng, out: Path) -> dict:
    names = list(GGUF_MUTATORS)
    name = names[int(rng.choice(len(names), p=[0.3, 0.2, 0.25, 0.15, 0.1]))]
    seed = seeds.models[int(rng.integers(len(seeds.models)))]
    case = GGUF_MUTATORS[name](seed, rng, out)
    return {"path": str(out), "seed": seed.name, **case}
