"""Build datasets/hugeicons.parquet, embedpipe's bundled demo corpus, from the npm package.

Source: the npm package `@iconify-json/hugeicons` (Huge Icons in Iconify JSON format, MIT).
Only the icon *names* are used, turned into words:

    "account-setting-02" -> "account setting"   (dashes -> spaces, trailing numeric variants dropped)

Rows are deduplicated by the resulting words; the first icon name in sorted order is kept in the
`name` column. Hidden icons (Iconify's deprecated names) and aliases are skipped.

Rebuild (needs npm and network access to the npm registry; run from the repository root):

    python datasets/build_hugeicons.py                         # pinned version, verified
    python datasets/build_hugeicons.py --tarball FILE.tgz      # offline, from a packed tarball
    python datasets/build_hugeicons.py --version 1.2.36 --integrity sha512-...   # update the pin

The tarball's npm `integrity` (SHA-512, base64) is checked before anything is read; update
PINNED_VERSION / PINNED_INTEGRITY together with datasets/hugeicons.SOURCE.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PACKAGE = "@iconify-json/hugeicons"
PINNED_VERSION = "1.2.35"
PINNED_INTEGRITY = "sha512-c06tY90JZnKhOLBAKoQ1z2pqXMRdATuYXslTKwaaIAjLzKsTIsE+GGknY6+qo/SP0U/NG9xQjr4N+zfDqOeQiQ=="
HERE = Path(__file__).resolve().parent
OUT = HERE / "hugeicons.parquet"


def npm_pack(version: str, dest: Path) -> Path:
    """`npm pack PACKAGE@version` into dest; returns the tarball path."""
    cmd = ["npm", "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"npm pack failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    info = json.loads(res.stdout)[0]
    return dest / info["filename"]


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def read_member(tgz: Path, name: str) -> dict:
    with tarfile.open(tgz, "r:gz") as tf:
        f = tf.extractfile(f"package/{name}")
        if f is None:
            sys.exit(f"{tgz}: package/{name} missing")
        return json.loads(f.read().decode("utf-8"))


def name_to_words(name: str) -> str:
    """'save-parking-spot-01' -> 'save parking spot'; keeps leading/inner numbers ('3d-move')."""
    parts = name.split("-")
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return " ".join(parts)


def build_rows(icons: dict) -> list[tuple[str, str]]:
    """(name, text) for visible icons, deduplicated by text, first name in sorted order kept."""
    seen: dict[str, str] = {}
    for name in sorted(icons):
        if icons[name].get("hidden"):
            continue
        seen.setdefault(name_to_words(name), name)
    return sorted(((n, t) for t, n in seen.items()), key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=PINNED_VERSION)
    ap.add_argument("--integrity", default=None, help="expected npm integrity (sha512-…)")
    ap.add_argument("--tarball", type=Path, default=None, help="use this .tgz instead of npm pack")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    expected = args.integrity or (PINNED_INTEGRITY if args.version == PINNED_VERSION else None)
    if expected is None:
        sys.exit("--integrity is required when --version differs from the pinned version")

    with tempfile.TemporaryDirectory() as tmp:
        tgz = args.tarball or npm_pack(args.version, Path(tmp))
        got = integrity(tgz)
        if got != expected:
            sys.exit(f"{tgz}: integrity {got} != expected {expected}")
        pkg = read_member(tgz, "package.json")
        info = read_member(tgz, "info.json")
        icons = read_member(tgz, "icons.json")["icons"]
    if pkg["name"] != PACKAGE or pkg["version"] != args.version:
        sys.exit(f"tarball is {pkg['name']}@{pkg['version']}, expected {PACKAGE}@{args.version}")
    if pkg.get("license") != "MIT":
        sys.exit(f"licence changed to {pkg.get('license')!r}: review before bundling")

    rows = build_rows(icons)
    table = pa.table(
        {
            "id": pa.array(range(len(rows)), pa.int64()),
            "name": pa.array([n for n, _ in rows], pa.string()),
            "text": pa.array([t for _, t in rows], pa.string()),
        },
    ).replace_schema_metadata(
        {
            "source": f"npm:{PACKAGE}@{pkg['version']}",
            "integrity": got,
            "license": pkg["license"],
            "author": info.get("author", {}).get("name", ""),
            "built_by": "datasets/build_hugeicons.py",
        }
    )
    pq.write_table(table, args.out, compression="zstd")
    visible = sum(not v.get("hidden") for v in icons.values())
    print(
        f"{PACKAGE}@{pkg['version']} ({got}): {len(icons)} icons, {visible} visible, "
        f"{len(rows)} rows after dedupe -> {args.out}"
    )


if __name__ == "__main__":
    main()
