"""Offline search over the bundled index with the bundled model.

pip unpacks the wheel, so the model and index are plain files in site-packages and are
memory-mapped in place (nothing is copied). On first use each file's SHA-256 is checked against
manifest.json; a stamp in the user cache (keyed by path, size, mtime) skips the ~1 s re-hash on
later runs. A modified or truncated file is refused with a message naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


class BundleError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_path(manifest_sha: str) -> Path:
    from platformdirs import user_cache_dir

    root = os.environ.get("EMBEDPIPE_CACHE_DIR") or user_cache_dir("embedpipe")
    return Path(root) / "bundle" / f"{manifest_sha[:16]}.verified.json"


def verified_files() -> dict:
    """manifest.json, after checking every data file (once per install) against its SHA-256."""
    raw = (HERE / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    seen = {
        name: [os.stat(DATA / name).st_size, os.stat(DATA / name).st_mtime_ns]
        for name in manifest["files"]
        if (DATA / name).exists()
    }
    stamp = _stamp_path(hashlib.sha256(raw).hexdigest())
    try:
        if json.loads(stamp.read_text()) == {"dir": str(DATA), "files": seen}:
            return manifest
    except (OSError, ValueError):
        pass
    for name, want in manifest["files"].items():
        path = DATA / name
        if not path.exists():
            raise BundleError(f"bundled file {path} is missing; reinstall the bundle wheel")
        if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
            raise BundleError(
                f"bundled file {path} is damaged (size or SHA-256 differs from "
                "manifest.json); reinstall the bundle wheel"
            )
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"dir": str(DATA), "files": seen}))
    except OSError:
        pass  # read-only cache: verify again next time
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="embedpipe-bundle", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search", help="nearest items for each query text")
    s.add_argument("queries", nargs="+")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="one JSON line per query")
    sub.add_parser("info", help="what the bundle carries")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        manifest = verified_files()
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.cmd == "info":
        print(json.dumps(manifest, indent=2))
        return 0
    from embedpipe.errors import EmbedpipeError
    from embedpipe.indexes import load_index
    from embedpipe.indexes.query import open_embedder, search_texts

    try:
        index = load_index(DATA / manifest["index"])
        embedder = open_embedder(index, DATA / manifest["model"])
        rows = search_texts(index, embedder, args.queries, args.k)
    except EmbedpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
            continue
        print(f"query: {row['query']}")
        for rank, hit in enumerate(row["results"], 1):
            extra = "  ".join(f"{c}={v}" for c, v in hit.items() if c not in ("id", "score"))
            print(f"{rank:3d}. {hit['score']:.4f}  {hit['id']}" + (f"  {extra}" if extra else ""))
    if os.environ.get("EMBEDPIPE_BUNDLE_TIMING"):
        print(f"total {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
