"""Release packaging: the bundle wheel (fast, in-process) and the full `make_release.py` run
installed into a clean venv from the built wheels only (marked `release`)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_release.py"
TEXTS = [
    "red apple pie",
    "blue ocean waves",
    "green forest trail",
    "fast red car",
    "quiet mountain lake",
    "old stone bridge",
    "bright morning sun",
    "cold winter night",
]


@pytest.fixture(scope="module")
def tiny_index(tiny_gguf, tmp_path_factory) -> Path:
    from embedpipe.indexes.query import build_from_dir
    from embedpipe.pipeline import IngestConfig, ingest

    d = tmp_path_factory.mktemp("release_src")
    pq.write_table(pa.table({"text": TEXTS, "name": [t.replace(" ", "-") for t in TEXTS]}), d / "c.parquet")
    ingest(
        IngestConfig(
            inputs=[str(d / "c.parquet")],
            output=str(d / "emb"),
            model=str(tiny_gguf),
            keep=["name"],
            cache=False,
            progress=False,
            backend="numpy",
        )
    )
    build_from_dir(d / "emb", d / "tiny.idx", "brute", "int8")
    return d / "tiny.idx"


def _expected(tiny_gguf: Path, index_path: Path, text: str, k: int = 10) -> list:
    """What `embedpipe search` in this repository answers: the bundle must say the same."""
    from embedpipe.indexes import load_index
    from embedpipe.indexes.query import open_embedder, search_texts

    index = load_index(index_path)
    return search_texts(index, open_embedder(index, tiny_gguf, backend="numpy"), [text], k)[0]["results"]


def _release(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_bundle_wheel_contents_and_offline_search(tiny_gguf, tiny_index, tmp_path):
    dist = tmp_path / "dist"
    res = _release("--dist", str(dist), "--model", str(tiny_gguf), "--index", str(tiny_index), "--skip-build")
    assert res.returncode == 0, res.stderr
    (wheel,) = dist.glob("embedpipe_bundle-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        record = zf.read(next(n for n in names if n.endswith("/RECORD"))).decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if not digest:
                continue
            data = zf.read(name)
            assert int(size) == len(data)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        manifest = json.loads(zf.read("embedpipe_bundle/manifest.json"))
        assert zf.getinfo("embedpipe_bundle/data/model.gguf").compress_type == zipfile.ZIP_STORED
        zf.extractall(tmp_path / "site")
    assert {
        "embedpipe_bundle/__main__.py",
        "embedpipe_bundle/data/model.gguf",
        "embedpipe_bundle/data/tiny.idx",
    } <= names
    assert manifest["files"]["model.gguf"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert manifest["index"] == "tiny.idx" and manifest["count"] == len(TEXTS)
    env = dict(
        os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}", EMBEDPIPE_CACHE_DIR=str(tmp_path / "cache")
    )
    run = [sys.executable, "-m", "embedpipe_bundle", "search", "--json", "-k", "3", TEXTS[3]]
    out = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["results"]
    want = _expected(tiny_gguf, tiny_index, TEXTS[3], 3)
    assert [h["id"] for h in got] == [h["id"] for h in want]
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-4)
    assert got[0]["name"] == TEXTS[got[0]["id"]].replace(" ", "-")
    assert list((tmp_path / "cache" / "bundle").glob("*.verified.json"))
    # a damaged model file is refused, not loaded
    model = tmp_path / "site" / "embedpipe_bundle" / "data" / "model.gguf"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    bad = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 1 and "damaged" in bad.stderr and "model.gguf" in bad.stderr


def test_bundle_refuses_index_of_another_model(tiny_index, tiny_model_q8, tmp_path):
    res = _release(
        "--dist", str(tmp_path), "--model", str(tiny_model_q8.path), "--index", str(tiny_index), "--skip-build"
    )
    assert res.returncode != 0 and "was built from model" in res.stderr


@pytest.mark.release
@pytest.mark.slow
def test_release_in_clean_venv(tiny_gguf, tiny_index, tmp_path):
    """sdist + wheel + twine check + bundle + wheelhouse; install offline into a fresh venv."""
    dist = tmp_path / "dist"
    res = _release("--dist", str(dist), "--model", str(tiny_gguf), "--index", str(tiny_index), "--wheelhouse")
    if res.returncode != 0 and "pip download" in res.stderr and "wheelhouse" not in res.stdout:
        pytest.skip(f"dependency wheels could not be downloaded: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr
    assert "PASSED" in res.stdout + res.stderr
    from embedpipe import __version__ as v

    for name in (f"embedpipe-{v}.tar.gz", f"embedpipe-{v}-py3-none-any.whl", f"embedpipe_bundle-{v}-py3-none-any.whl"):
        assert (dist / name).is_file(), name
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(dist),
            "--find-links",
            str(dist / "wheelhouse"),
            "embedpipe_bundle",
        ],
        check=True,
        timeout=900,
    )
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "EMBEDPIPE_CACHE_DIR": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [str(venv / "bin" / "embedpipe-bundle"), "search", "--json", TEXTS[5]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["results"]
    want = _expected(tiny_gguf, tiny_index, TEXTS[5])
    assert [h["id"] for h in got] == [h["id"] for h in want] and len(got) == len(TEXTS)
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-4)
    # the installed embedpipe is the built wheel, not the repository
    where = subprocess.run(
        [str(py), "-c", "import embedpipe; print(embedpipe.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert str(venv) in where.stdout
