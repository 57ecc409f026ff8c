"""A GGUF file as an editable document: read a seed with gguf-py, change anything, write bytes.

The fuzzer needs files that are well-formed GGUF with wrong *content* (a metadata key of the
wrong type, a tensor offset that overlaps another, a count of 2^63), which neither a byte flip
nor gguf's own writer produces. `serialize` writes exactly what is in the document, checked or
not, and records where each length/count field sits so raw patches can target them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

STRING, ARRAY = 8, 9
SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class KV:
    key: str
    vtype: int
    value: Any  # scalar, str/bytes, or a list for arrays
    item_type: int | None = None


@dataclass
class Tensor:
    name: str
    dims: list[int]  # ggml order
    ttype: int
    offset: int  # relative to the data section


@dataclass
class GGUFDoc:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes
    alignment: int = 32
    # filled by serialize: field name -> byte offset of a u64 length/count in the output
    positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, path) -> GGUFDoc:
        r = gguf.GGUFReader(str(path))
        kvs = []
        for key, f in r.fields.items():
            if key.startswith("GGUF."):
                continue
            vtype = int(f.types[0])
            if vtype == ARRAY:
                item = int(f.types[1])
                if item == STRING:
                    value = [bytes(f.parts[i]) for i in f.data]
                else:
                    value = [f.parts[i].tolist()[0] for i in f.data]
                kvs.append(KV(key, vtype, value, item))
            elif vtype == STRING:
                kvs.append(KV(key, vtype, bytes(f.parts[-1])))
            else:
                kvs.append(KV(key, vtype, f.parts[-1].tolist()[0]))
        tensors = [
            Tensor(t.name, [int(d) for d in t.shape], int(t.tensor_type), int(t.data_offset - r.data_offset))
            for t in r.tensors
        ]
        data = bytes(np.asarray(r.data[r.data_offset :]))
        align = next((kv.value for kv in kvs if kv.key == "general.alignment"), 32)
        return cls(3, kvs, tensors, data, int(align))

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def serialize(self) -> bytes:
        out = bytearray()
        self.positions = {}
        out += b"GGUF" + struct.pack("<I", self.version)
        self.positions["n_tensors"] = len(out)
        out += struct.pack("<Q", len(self.tensors))
        self.positions["n_kv"] = len(out)
        out += struct.pack("<Q", len(self.kvs))

        def string(s: str | bytes, tag: str) -> None:
            b = s.encode() if isinstance(s, str) else s
            self.positions[tag] = len(out)
            out.extend(struct.pack("<Q", len(b)) + b)

        def value(vtype: int, v: Any, tag: str, item_type: int | None = None) -> None:
            if vtype == STRING:
                string(v, tag + ".len")
            elif vtype == ARRAY:
                out.extend(struct.pack("<I", item_type))
                self.positions[tag + ".count"] = len(out)
                out.extend(struct.pack("<Q", len(v)))
                for i, item in enumerate(v):
                    value(item_type, item, f"{tag}[{i}]")
            else:
                out.extend(struct.pack(SCALAR_FMT[vtype], v))

        for kv in self.kvs:
            string(kv.key, f"kv:{kv.key}.keylen")
            out.extend(struct.pack("<I", kv.vtype))
            value(kv.vtype, kv.value, f"kv:{kv.key}", kv.item_type)
        for t in self.tensors:
            string(t.name, f"t:{t.name}.namelen")
            out.extend(struct.pack("<I", len(t.dims)))
            for j, d in enumerate(t.dims):
                self.positions[f"t:{t.name}.dim{j}"] = len(out)
                out.extend(struct.pack("<Q", d & (2**64 - 1)))
            out.extend(struct.pack("<I", t.ttype))
            self.positions[f"t:{t.name}.offset"] = len(out)
            out.extend(struct.pack("<Q", t.offset & (2**64 - 1)))
        pad = -len(out) % self.alignment if self.alignment > 0 else 0
        out.extend(b"\0" * pad)
        out.extend(self.data)
        return bytes(out)
