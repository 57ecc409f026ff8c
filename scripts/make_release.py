"""`make release`: sdist + wheel of embedpipe, `twine check`, and the offline search bundle.

    python scripts/make_release.py [--model GGUF] [--index FILE | --emb-dir DIR] [--wheelhouse]
                                   [--dist dist] [--skip-build] [--skip-bundle]

1. `python -m build` writes dist/embedpipe-<v>.tar.gz and dist/embedpipe-<v>-py3-none-any.whl
   (the version comes from embedpipe/__init__.py `__version__` only), then `twine check`.
2. The bundle: dist/embedpipe_bundle-<v>-py3-none-any.whl, a wheel whose package data is a GGUF
   model and a prebuilt index (plus manifest.json with their SHA-256) and whose
   `python -m embedpipe_bundle search "…"` answers offline. It depends on embedpipe==<v>.
   Default model: the cached EmbeddingGemma Q8_0 (`embedpipe model pull`); default index: a
   brute int8 index of the Hugeicons demo corpus (ingested with that model; the ingest cache
   makes reruns fast). The index must have been built from exactly that model (SHA-256).
   The wheel is written directly (zipfile, RECORD hashes) with the model stored uncompressed.
3. --wheelhouse: `pip download` embedpipe's dependencies as wheels into dist/wheelhouse, so
   `pip install --no-index --find-links dist --find-links dist/wheelhouse embedpipe_bundle`
   works on a machine without network.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_SRC = ROOT / "release" / "bundle" / "embedpipe_bundle"
BUNDLE_NAME = "embedpipe_bundle"
DEMO_CORPUS = ROOT / "datasets" / "hugeicons.parquet"


def log(msg: str) -> None:
    print(f"[make_release] {msg}", file=sys.stderr, flush=True)


def version() -> str:
    text = (ROOT / "embedpipe" / "__init__.py").read_text()
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not m:
        sys.exit("embedpipe/__init__.py has no __version__")
    return m.group(1)


def run(*cmd: str) -> None:
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


def build_dists(dist: Path) -> list[Path]:
    v = version()
    for old in list(dist.glob("embedpipe-*.tar.gz")) + list(dist.glob("embedpipe-*.whl")):
        old.unlink()
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT))
    out = [dist / f"embedpipe-{v}.tar.gz", dist / f"embedpipe-{v}-py3-none-any.whl"]
    missing = [p.name for p in out if not p.exists()]
    if missing:
        sys.exit(f"build did not produce {missing}")
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def default_index(model: Path, work: Path) -> Path:
    """Brute int8 index of the Hugeicons demo corpus embedded with `model` (name kept)."""
    from embedpipe.indexes.query import build_from_dir
    from embedpipe.pipeline import IngestConfig, ingest

    emb_dir = work / "hugeicons-emb"
    log(f"ingesting {DEMO_CORPUS.name} with {model.name} (cached vectors are reused)")
    ingest(
        IngestConfig(
            inputs=[str(DEMO_CORPUS)],
            output=str(emb_dir),
            model=str(model),
            task="document",
            keep=["name"],
            overwrite=True,
        )
    )
    out = work / "hugeicons-brute-int8.idx"
    build_from_dir(emb_dir, out, "brute", "int8")
    return out


def index_files(index: Path) -> list[Path]:
    """The index file and its sidecars (annoy keeps ids/header in PATH.ids)."""
    return [index] + sorted(p for p in index.parent.glob(index.name + ".*") if p.is_file())


def _record_line(arcname: str, data_hash: str, size: int) -> str:
    return f"{arcname},sha256={data_hash},{size}"


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_bundle_wheel(dist: Path, model: Path, index: Path) -> Path:
    """dist/embedpipe_bundle-<v>-py3-none-any.whl with model + index + manifest as data."""
    from embedpipe.indexes import load_index
    from embedpipe.runtime.embedder import Embedder

    v = version()
    idx = load_index(index)
    model_sha = sha256_file(model)
    if idx.meta.model_sha256 and idx.meta.model_sha256 != model_sha:
        sys.exit(f"{index} was built from model {idx.meta.model_sha256[:12]}…, not {model} ({model_sha[:12]}…)")
    emb = Embedder.load(model)  # refuse a broken model now, not on the user's machine
    files = {"model.gguf": model} | {p.name: p for p in index_files(index)}
    manifest = {
        "embedpipe": v,
        "model": "model.gguf",
        "index": index.name,
        "index_type": idx.kind,
        "quant": idx.quant,
        "dim": idx.dim,
        "count": idx.count,
        "task": idx.meta.task,
        "model_sha256": model_sha,
        "model_file": model.name,
        "max_tokens": emb.max_tokens,
        "files": {
            name: {"size": p.stat().st_size, "sha256": model_sha if p == model else sha256_file(p)}
            for name, p in files.items()
        },
    }
    dist_info = f"{BUNDLE_NAME}-{v}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: embedpipe-bundle",
            f"Version: {v}",
            "Summary: embedpipe offline search bundle: a GGUF embedding model and a prebuilt index",
            "License: Apache-2.0 (code); the bundled model is under its own terms (EmbeddingGemma: "
            "Gemma Terms of Use, https://ai.google.dev/gemma/terms)",
            "Requires-Python: >=3.11",
            f"Requires-Dist: embedpipe=={v}",
            "Description-Content-Type: text/markdown",
            "",
            f"# embedpipe bundle {v}",
            "",
            f'Offline semantic search: `python -m embedpipe_bundle search "query"` embeds the query '
            f"with the bundled model ({model.name}) and searches the bundled {idx.kind} {idx.quant} "
            f"index ({idx.count} vectors, dim {idx.dim}). No download happens at run time.",
            "",
        ]
    )
    texts = {
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: embedpipe make_release\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": f"[console_scripts]\nembedpipe-bundle = {BUNDLE_NAME}.__main__:main\n",
        f"{BUNDLE_NAME}/manifest.json": json.dumps(manifest, indent=2) + "\n",
    }
    for src in sorted(BUNDLE_SRC.glob("*.py")):
        texts[f"{BUNDLE_NAME}/{src.name}"] = src.read_text()
    out = dist / f"{BUNDLE_NAME}-{v}-py3-none-any.whl"
    tmp = out.with_suffix(".tmp")
    record = []
    with zipfile.ZipFile(tmp, "w") as zf:
        for arc, text in texts.items():
            data = text.encode()
            zf.writestr(zipfile.ZipInfo(arc, (2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            record.append(_record_line(arc, _b64(hashlib.sha256(data).digest()), len(data)))
        for name, path in files.items():
            arc = f"{BUNDLE_NAME}/data/{name}"
            hexsha = manifest["files"][name]["sha256"]
            zf.write(path, arc, zipfile.ZIP_STORED)
            record.append(_record_line(arc, _b64(bytes.fromhex(hexsha)), path.stat().st_size))
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(
            zipfile.ZipInfo(f"{dist_info}/RECORD", (2020, 1, 1, 0, 0, 0)),
            "\n".join(record) + "\n",
            zipfile.ZIP_DEFLATED,
        )
    tmp.replace(out)
    return out


def wheelhouse(dist: Path, wheel: Path) -> Path:
    house = dist / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(house), str(wheel))
    (house / wheel.name).unlink(missing_ok=True)  # embedpipe itself lives in dist/
    return house


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, default=ROOT / "dist")
    ap.add_argument("--model", type=Path, help="GGUF to bundle (default: cached EmbeddingGemma Q8_0)")
    ap.add_argument("--index", type=Path, help="prebuilt index file to bundle")
    ap.add_argument("--emb-dir", type=Path, help="ingest output to index (brute int8) instead")
    ap.add_argument("--wheelhouse", action="store_true", help="also download dependency wheels")
    ap.add_argument("--skip-build", action="store_true", help="bundle only (embedpipe wheel exists)")
    ap.add_argument("--skip-bundle", action="store_true", help="sdist + wheel only")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    dist = args.dist.resolve()
    dist.mkdir(parents=True, exist_ok=True)
    v = version()
    t0 = time.perf_counter()
    if not args.skip_build:
        built = build_dists(dist)
        run(sys.executable, "-m", "twine", "check", "--strict", *map(str, built))
    if not args.skip_bundle:
        from embedpipe.runtime.store import cached_model_path

        model = args.model or cached_model_path()
        if model is None or not Path(model).exists():
            sys.exit("no model to bundle: run `embedpipe model pull` or pass --model PATH")
        with tempfile.TemporaryDirectory(prefix="embedpipe-release-") as tmp:
            index = args.index
            if index is None and args.emb_dir:
                from embedpipe.indexes.query import build_from_dir

                index = Path(tmp) / "index.idx"
                build_from_dir(args.emb_dir, index, "brute", "int8")
            index = index or default_index(Path(model), Path(tmp))
            bundle = write_bundle_wheel(dist, Path(model).resolve(), Path(index).resolve())
        run(sys.executable, "-m", "twine", "check", "--strict", str(bundle))
        log(f"bundle {bundle.name}: {bundle.stat().st_size / 1e6:.1f} MB")
    if args.wheelhouse:
        wheelhouse(dist, dist / f"embedpipe-{v}-py3-none-any.whl")
    log(f"done in {time.perf_counter() - t0:.0f} s; artifacts in {dist}")
    for p in sorted(dist.glob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>12}  {p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
