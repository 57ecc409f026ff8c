"""`embedpipe index info`: what an index file holds, from its header (no vectors are read)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.indexes.format import FORMAT_VERSION, is_container, read_container
from embedpipe.indexes.registry import index_kind, load_index


def index_info(path: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Header, counts, tombstones, build parameters and section sizes of the index at `path`.

    With `verify` the whole payload is read and checked against its checksums (the index's own
    and, for annoy, the .ann file's) as `load_index` does before a search; a mismatch raises
    `IndexFileError`. Without it only the header is read, so it is instant on any size.
    """
    path = Path(path)
    kind = index_kind(path)
    index = load_index(path, verify=verify)
    out: dict[str, Any] = {
        "path": str(path),
        "type": kind,
        "dim": index.dim,
        "quant": index.quant,
        "count": index.count,
        "tombstones": len(index.deleted),
        "live": index.count - len(index.deleted),
        "id_kind": index.ids.kind,
        "columns": sorted(index.columns),
        "model": index.meta.model_sha256 or "no model",
        "model_path": index.meta.model_path,
        "task": index.meta.task,
        "source_dim": index.meta.source_dim,
        "file_bytes": path.stat().st_size,
        "checksums": "verified" if verify else "not checked (--verify reads the whole file)",
    }
    if is_container(path):  # annoy files are Spotify's layout: parameters live in the sidecar
        header, sections = read_container(path, verify=False)
        out["format_version"] = FORMAT_VERSION
        out["params"] = header.get("params", {})
        out["payload_crc32"] = f"{header['payload_crc32']:08x}"
        out["sections"] = {k: int(v.nbytes) for k, v in sections.items()}
    else:
        out["params"] = {k: getattr(index, k) for k in ("n_trees", "search_k") if hasattr(index, k)}
    extra = dict(index.meta.extra)
    out["parts"] = len(extra.get("part_rows", {})) or extra.get("parts")
    out["source"] = extra.get("embeddings_dir") or extra.get("source")
    if kind == "hnsw":
        nbr0 = np.asarray(index.nbr0)
        out["graph"] = {
            "entry": int(index.entry),
            "max_level": int(index.level.max(initial=0)),
            "mean_degree_layer0": round(float((nbr0 >= 0).sum()) / max(1, len(nbr0)), 2),
            "upper_rows": int(len(index.nbru)),
        }
    return out


def format_info(info: dict[str, Any]) -> str:
    """The info dict as aligned `key: value` lines."""
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        lines.append(f"{key + ':':<16}{value}")
    return "\n".join(lines)
