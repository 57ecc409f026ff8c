"""Index mutators: raw bytes (checksums kept or recomputed), header fields of every wrong type,
targeted section values (graph ids, levels, offsets, scales), HNSW entry points and levels,
Annoy node values in our files and in Spotify `.ann` files."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.fuzz.mutate import byte_mutation
from tests.fuzz.seeds import INDEX_DIM, Seeds

HEADER_VALUES = [
    None,
    -1,
    0,
    1,
    2,
    7,
    2**31,
    2**40,
    2**63,
    -(2**63),
    1.5,
    float("nan"),
    "x",
    "",
    [],
    {},
    True,
    [0],
    [-1, 1],
    [2**40],
    "<f8",
    "|O",
    "<U4",
    ">f4",
    "<i8",
    "int8",
    "fp32",
    "hnsw",
    "annoy",
]
SLACK = "_fuzz_slack"


# ----------------------------------------------------------------------------- index container


def add_slack(path: Path) -> None:
    """Rewrite a container with a padding field in its header, so mutated headers of a
    different length can be resealed in place (the padding absorbs the difference)."""
    from embedpipe.indexes.format import read_container, write_container

    header, sections = read_container(path)
    header = {k: v for k, v in header.items() if k not in ("payload_offset", "payload_size", "payload_crc32")}
    header[SLACK] = " " * 512
    write_container(path, header, {k: np.array(v) for k, v in sections.items()})


def _parts(buf: bytes) -> tuple[int, dict | None]:
    header_len = struct.unpack_from("<I", buf, 12)[0] if len(buf) >= 24 else 0
    try:
        return header_len, json.loads(buf[24 : 24 + header_len])
    except ValueError:
        return header_len, None


def reseal(buf: bytes, header: dict | None = None) -> bytes:
    """Recompute the header and payload checksums after an edit (header padded to its old length)."""
    b = bytearray(buf)
    if len(b) < 24:
        return bytes(b)
    header_len, parsed = _parts(buf)
    if header is None:
        header = parsed
    if isinstance(header, dict):
        try:
            lo, size = int(header["payload_offset"]), int(header["payload_size"])
            if 0 <= lo and lo + size <= len(b):
                header["payload_crc32"] = zlib.crc32(bytes(b[lo : lo + size]))
        except (KeyError, TypeError, ValueError, OverflowError):
            pass
        header[SLACK] = ""
        blob = json.dumps(header, sort_keys=True).encode()
        room = header_len - len(blob)
        if room >= 0:
            header[SLACK] = " " * room
            blob = json.dumps(header, sort_keys=True).encode()
            b[24 : 24 + header_len] = blob
    blob = bytes(b[24 : 24 + header_len])
    b[16:20] = struct.pack("<I", zlib.crc32(blob))
    return bytes(b)


def _container_file(seed: Path) -> Path:
    from embedpipe.indexes.format import is_container

    return seed if is_container(seed) else Path(str(seed) + ".ids")


def _copy_annoy(seed: Path, out: Path) -> tuple[Path, Path]:
    """Index path to open and the container file inside the copy (annoy: the .ids sidecar)."""
    if _container_file(seed) == seed:
        return out, out
    ann = out.with_suffix(".ann")
    ann.write_bytes(seed.read_bytes())
    return ann, Path(str(ann) + ".ids")


def idx_bytes(seed: Path, rng, out: Path, fix: bool = False) -> dict:
    path, cont = _copy_annoy(seed, out)
    src = _container_file(seed)
    if cont != path and rng.random() < 0.5:  # the .ann payload instead of the sidecar
        cont.write_bytes(src.read_bytes())
        ann = bytearray(path.read_bytes())
        path.write_bytes(byte_mutation(bytes(ann), rng))
        if fix:
            _refresh_ann_crc(path, cont)
    else:
        buf = byte_mutation(src.read_bytes(), rng)
        cont.write_bytes(reseal(buf) if fix else buf)
    return {
        "target": "index",
        "kind": "idx_bytes_resealed" if fix else "idx_bytes",
        "path": str(path),
        "verify": bool(rng.random() < 0.7),
    }


def _refresh_ann_crc(ann: Path, sidecar: Path) -> None:
    buf = sidecar.read_bytes()
    _, header = _parts(buf)
    if isinstance(header, dict):
        data = ann.read_bytes()
        header["ann_crc32"] = zlib.crc32(data)
        header["ann_size"] = len(data)
        sidecar.write_bytes(reseal(buf, header))


def _set_path(obj, path: list, value) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _paths(obj, prefix=()) -> list[list]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in (SLACK, "payload_crc32"):
                continue
            out.append([*prefix, k])
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list) and len(obj) < 8:
        for i, v in enumerate(obj):
            out.append([*prefix, i])
            out.extend(_paths(v, (*prefix, i)))
    return out


def idx_header(seed: Path, rng, out: Path) -> dict:
    """A header field of the wrong type or value, checksums recomputed."""
    path, cont = _copy_annoy(seed, out)
    buf = _container_file(seed).read_bytes()
    _, header = _parts(buf)
    paths = _paths(header)
    p = paths[int(rng.integers(len(paths)))]
    old = header
    for k in p:
        old = old[k]
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        value = int(old + rng.choice([-1, 1, 2, 64, -64, old, -2 * old - 1, 2**31]))
    else:
        value = HEADER_VALUES[int(rng.integers(len(HEADER_VALUES)))]
    _set_path(header, p, value)
    cont.write_bytes(reseal(buf, header))
    return {
        "target": "index",
        "kind": "idx_header",
        "path": str(path),
        "field": ".".join(map(str, p)),
        "value": repr(value)[:40],
        "verify": bool(rng.random() < 0.5),
    }


SECTION_VALUES = {
    "i": [-1, -2, 1, 2**31 - 1, -(2**31), 2**40, -(2**40), 127, -128, 10**6],
    "f": [float("nan"), float("inf"), float("-inf"), 1e38, 0.0, -1e-45],
}


def idx_values(seed: Path, rng, out: Path) -> dict:
    """A value inside a section (graph ids, levels, offsets, scales, ids) set to an extreme,
    checksums recomputed: what a buggy writer or `verify=False` lets through."""
    path, cont = _copy_annoy(seed, out)
    buf = bytearray(_container_file(seed).read_bytes())
    _, header = _parts(bytes(buf))
    names = sorted(header["sections"])
    weights = np.array([4.0 if n in ("nbr0", "nbru", "level", "upoff", "scale", "offset") else 1.0 for n in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    info = header["sections"][name]
    dt = np.dtype(info["dtype"])
    n = info["nbytes"] // dt.itemsize
    if n == 0:
        header["params"] = dict(header.get("params", {}), entry=int(rng.choice([-1, 2**31, 10**6])))
        cont.write_bytes(reseal(bytes(buf), header))
        return {"target": "index", "kind": "idx_values", "path": str(path), "field": "params.entry", "verify": True}
    arr = np.frombuffer(buf, dt, count=n, offset=info["offset"]).copy()
    count = int(rng.choice([1, 1, 1, 3, max(1, n // 10)]))
    idx = rng.integers(0, n, count)
    vals = SECTION_VALUES["f" if dt.kind == "f" else "i"]
    v = vals[int(rng.integers(len(vals)))]
    if dt.kind != "f":
        info_max = np.iinfo(dt)
        v = int(np.clip(v, info_max.min, info_max.max))
        if rng.random() < 0.3:  # just past the valid range
            v = int(np.clip(header.get("count", 0) + int(rng.integers(0, 3)), info_max.min, info_max.max))
    arr[idx] = v
    buf[info["offset"] : info["offset"] + info["nbytes"]] = arr.tobytes()
    cont.write_bytes(reseal(bytes(buf)))
    return {
        "target": "index",
        "kind": "idx_values",
        "path": str(path),
        "field": name,
        "value": repr(v),
        "verify": bool(rng.random() < 0.5),
    }


def entry_level(seed: Path, rng, out: Path) -> dict:
    """HNSW entry point and levels (the issue's SIGSEGV cases), checksums recomputed."""
    path, cont = _copy_annoy(seed, out)
    buf = bytearray(_container_file(seed).read_bytes())
    _, header = _parts(bytes(buf))
    if header.get("type") != "hnsw":
        return idx_values(seed, rng, out)
    entry = header["params"]["entry"]
    kind = int(rng.integers(0, 4))
    if kind == 0:
        header["params"]["entry"] = int(rng.choice([-1, header["count"], 2**31, -(2**31), 2**40]))
        what = f"entry {header['params']['entry']}"
    else:
        name, item = {
            1: ("level", int(rng.choice([127, -1, 31, 40]))),
            2: ("upoff", int(rng.choice([2**40, -1, 10**6, 2**62]))),
            3: ("level", int(header["params"].get("max_level", 1)) + 1),
        }[kind]
        info = header["sections"][name]
        dt = np.dtype(info["dtype"])
        arr = np.frombuffer(buf, dt, count=info["nbytes"] // dt.itemsize, offset=info["offset"]).copy()
        arr[entry if rng.random() < 0.7 else int(rng.integers(len(arr)))] = item
        buf[info["offset"] : info["offset"] + info["nbytes"]] = arr.tobytes()
        what = f"{name} {item}"
    cont.write_bytes(reseal(bytes(buf), header))
    return {
        "target": "index",
        "kind": "hnsw_entry_level",
        "path": str(path),
        "change": what,
        "verify": bool(rng.random() < 0.5),
    }


# ----------------------------------------------------------------------------- annoy nodes


def annoy_nodes(seed: Path, rng, out: Path, spotify: bool = False) -> dict:
    """A node's n_descendants, child, leaf item id or split normal set to an extreme, in a
    Spotify file (no checksum) or in ours with the sidecar checksum recomputed."""
    ann = out.with_suffix(".ann")
    nodes = np.fromfile(seed, np.int32).reshape(-1, INDEX_DIM + 3)
    n_nodes = len(nodes)
    n_items = int(nodes[-1, 0])
    region = rng.random()
    if region < 0.2:
        i = n_nodes - 1 - int(rng.integers(0, 4))  # a root copy
    elif region < 0.35:
        i = int(rng.integers(0, n_items))
    else:
        i = int(rng.integers(n_items, n_nodes))
    col = int(rng.choice([0, 1, 2, 3, 3 + int(rng.integers(INDEX_DIM))]))
    K = INDEX_DIM + 2
    vals = [-1, 0, 1, 2, K, K + 1, n_items, n_items - 1, n_items + 1, n_nodes, n_nodes - 1, 2**31 - 1, -(2**31), i]
    v = int(vals[int(rng.integers(len(vals)))])
    if col >= 3 and rng.random() < 0.4:
        v = int(np.array([np.nan, np.inf, -np.inf], np.float32)[int(rng.integers(3))].view(np.int32))
    nodes = nodes.copy()
    nodes[i, col] = v
    nodes.tofile(ann)
    case = {
        "kind": "annoy_nodes_spotify" if spotify else "annoy_nodes",
        "node": i,
        "col": col,
        "value": v,
        "path": str(ann),
    }
    if spotify:
        return {"target": "annoy_spotify", "dim": INDEX_DIM, **case}
    sidecar = Path(str(seed) + ".ids")
    Path(str(ann) + ".ids").write_bytes(sidecar.read_bytes())
    _refresh_ann_crc(ann, Path(str(ann) + ".ids"))
    return {"target": "index", "verify": bool(rng.random() < 0.5), **case}


def spotify_bytes(seed: Path, rng, out: Path) -> dict:
    ann = out.with_suffix(".ann")
    ann.write_bytes(byte_mutation(seed.read_bytes(), rng))
    return {"target": "annoy_spotify", "kind": "spotify_bytes", "dim": INDEX_DIM, "path": str(ann)}


INDEX_MUTATORS: dict[str, Callable] = {
    "idx_bytes": idx_bytes,
    "idx_bytes_resealed": lambda s, r, o: idx_bytes(s, r, o, fix=True),
    "idx_header": idx_header,
    "idx_values": idx_values,
    "hnsw_entry_level": entry_level,
}


def index_case(seeds: Seeds, rng, out: Path) -> dict:
    r = rng.random()
    if r < 0.15:
        seed = seeds.spotify[int(rng.integers(len(seeds.spotify)))]
        case = annoy_nodes(seed, rng, out, spotify=True) if rng.random() < 0.7 else spotify_bytes(seed, rng, out)
    elif r < 0.27:
        annoys = [s for s in seeds.indexes if not s.read_bytes()[:4] == b"EMBP"]
        seed = annoys[int(rng.integers(len(annoys)))]
        case = annoy_nodes(seed, rng, out)
    else:
        names = list(INDEX_MUTATORS)
        name = names[int(rng.choice(len(names), p=[0.15, 0.2, 0.25, 0.25, 0.15]))]
        seed = seeds.indexes[int(rng.integers(len(seeds.indexes)))]
        case = INDEX_MUTATORS[name](seed, rng, out)
        case.setdefault("path", str(out))
    return {"seed": seed.name, **case}
