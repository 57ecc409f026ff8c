"""Mutators: each writes one mutated file from a seed and returns the case that opens it.

Byte-level mutators (here) model a bad disk; the structured ones (`mutate_gguf`,
`mutate_index`) model a hostile or buggy writer: well-formed GGUF with wrong content, index
files whose checksums were recomputed after the edit, graph and tree values aimed at the search
kernels. All are deterministic in `rng`; `plan` draws a whole campaign.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tests.fuzz.seeds import Seeds

INTERESTING_U64 = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**33, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
INTERESTING_I32 = [0, 1, -1, 2, -2, 127, 128, 255, 2**15, 2**31 - 1, -(2**31), 2**24]

# ----------------------------------------------------------------------------- bytes


def byte_mutation(buf: bytes, rng: np.random.Generator, lo: int = 0, hi: int | None = None) -> bytes:
    """One bad-disk style edit inside [lo, hi)."""
    b = bytearray(buf)
    hi = len(b) if hi is None else min(hi, len(b))
    if hi <= lo:
        return bytes(b)
    kind = rng.integers(0, 8)
    pos = int(rng.integers(lo, hi))
    if kind == 0:  # flip a few bits
        for _ in range(int(rng.integers(1, 4))):
            p = int(rng.integers(lo, hi))
            b[p] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # interesting 64-bit value at an 8-aligned-ish spot
        v = INTERESTING_U64[int(rng.integers(len(INTERESTING_U64)))]
        b[pos : pos + 8] = struct.pack("<Q", v)[: len(b[pos : pos + 8])]
    elif kind == 2:
        v = INTERESTING_I32[int(rng.integers(len(INTERESTING_I32)))]
        b[pos : pos + 4] = struct.pack("<i", v)[: len(b[pos : pos + 4])]
    elif kind == 3:  # truncate
        return bytes(b[:pos])
    elif kind == 4:  # zero a block
        n = int(rng.integers(1, 4096))
        b[pos : pos + n] = bytes(len(b[pos : pos + n]))
    elif kind == 5:  # 0xFF over a block (same size)
        n = int(rng.integers(1, 65536))
        b[pos : pos + n] = b"\xff" * len(b[pos : pos + n])
    elif kind == 6:  # random bytes
        n = int(rng.integers(1, 64))
        b[pos : pos + n] = rng.integers(0, 256, len(b[pos : pos + n]), dtype=np.uint8).tobytes()
    else:  # insert or delete bytes (shifts everything after)
        n = int(rng.integers(1, 16))
        if rng.random() < 0.5:
            b[pos:pos] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        else:
            del b[pos : pos + n]
    return bytes(b)


# ----------------------------------------------------------------------------- plan


def plan(seeds: Seeds, work: Path, n_gguf: int, n_index: int, n_ingest: int, seed: int = 0) -> list[dict]:
    """Write n mutated files of each family under `work`; the cases that open them."""
    from tests.fuzz.ingest_cases import ingest_case
    from tests.fuzz.mutate_gguf import gguf_case
    from tests.fuzz.mutate_index import index_case

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_gguf):
        cases.append(gguf_case(seeds, rng, work / f"g{i}.gguf"))
    for i in range(n_index):
        cases.append(index_case(seeds, rng, work / f"x{i}.idx"))
    for i in range(n_ingest):
        cases.append(ingest_case(seeds, rng, work / f"c{i}", i))
    return cases
