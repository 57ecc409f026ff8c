"""Resume manifest: an append-only, fsynced log of finished parts in the output directory.

`_manifest.jsonl` line 1 is the job header (model, settings, inputs), written atomically; every
later line records one committed part (its input row range, file, counts and the length of
`_skipped.jsonl` after its skipped rows were appended); a last `done` line closes the job. The
commit order per part is: part file fsynced and renamed -> skipped rows appended and fsynced ->
manifest line appended and fsynced. A kill at any moment leaves at worst a torn last line, a temp
file, a renamed part without a manifest line or extra skipped lines; `Manifest.open` removes all
of those, so the resumed job redoes exactly the unfinished parts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from embedpipe.errors import ArgumentError, EmbedpipeError
from embedpipe.pipeline.dataset import PART_GLOB, TEMP_GLOB
from embedpipe.pipeline.writer import fsync_dir

MANIFEST = "_manifest.jsonl"
SKIPPED = "_skipped.jsonl"
SUMMARY = "_summary.json"
LOCK = ".ingest.lock"
HEADER_TEMP = f".{MANIFEST}.tmp"
OWNED_GLOBS = (PART_GLOB, TEMP_GLOB, MANIFEST, SKIPPED, SUMMARY, HEADER_TEMP, f".{SUMMARY}.tmp", LOCK)
#: What a job kill -9'd before its header was renamed into place leaves: the directory still
#: counts as empty, and the rerun starts the job afresh.
STARTING = frozenset({LOCK, HEADER_TEMP})


class ResumeRefused(EmbedpipeError):
    """The output directory belongs to a job with different model/settings/inputs."""


def _describe_diff(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "inputs":
                out.append("the input files changed (paths, sizes or modification times)")
            else:
                out.append(f"{key}: was {old.get(key)!r}, now {new.get(key)!r}")
    return out


def _append_line(path: Path, data: dict) -> None:
    with open(path, "ab") as handle:
        handle.write((json.dumps(data, sort_keys=True) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


class Manifest:
    def __init__(self, out_dir: Path, header: dict):
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST
        self.header = header
        self.parts: dict[int, dict] = {}
        self.done: dict | None = None
        self.skipped_bytes = 0
        self._lock_fd: int | None = None

    def _lock(self) -> None:
        """One writer per output directory; the OS drops the lock when the process dies (kill -9 too)."""
        fd = os.open(self.out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbedpipeError(f"{self.out_dir}: another ingest is writing to this directory") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def open(cls, out_dir: Path, header: dict, resume: bool = False, overwrite: bool = False) -> Manifest:
        """Start a job in `out_dir` or pick up the one already there (same header required)."""
        out_dir = Path(out_dir)
        manifest = cls(out_dir, header)
        if not manifest.path.exists():
            if resume:
                raise ArgumentError(
                    "resume",
                    f"{out_dir}: nothing to resume (no {MANIFEST}); run without {{resume}} to start",
                    values={"resume": True},
                )
            if out_dir.exists() and any(p.name not in STARTING for p in out_dir.iterdir()) and not overwrite:
                raise ArgumentError(
                    "overwrite",
                    f"{out_dir} exists and is not an ingest output directory being resumed; "
                    "choose a new or empty {output}, or pass {overwrite}",
                    ("output",),
                    values={"overwrite": True},
                )
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest._lock()
        try:
            if overwrite:
                remove_outputs(out_dir)
            if manifest.path.exists():
                manifest._load()
                manifest._clean()
            else:
                manifest._write_header()
        except BaseException:
            manifest.close()
            raise
        return manifest

    def _write_header(self) -> None:
        tmp = self.out_dir / HEADER_TEMP
        tmp.write_text(json.dumps({"kind": "header", **self.header}, sort_keys=True) + "\n")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.out_dir)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good = 0
        entries = []
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn by a kill in the middle of an append
            try:
                entries.append(json.loads(line))
            except ValueError:
                break
            good += len(line)
        if good < len(raw):
            with open(self.path, "rb+") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
        if not entries or entries[0].get("kind") != "header":
            raise ArgumentError(
                "overwrite",
                f"{self.path}: not an embedpipe manifest; pass {{overwrite}} to start over",
                values={"overwrite": True},
            )
        old = {k: v for k, v in entries[0].items() if k != "kind"}
        diff = _describe_diff(old, self.header)
        if diff:
            raise ResumeRefused(
                f"refusing to resume into {self.out_dir}: it holds a job with different settings — "
                + "; ".join(diff)
                + ". Use another --output, or --overwrite to start over."
            )
        for entry in entries[1:]:
            if entry.get("kind") == "part":
                self.parts[int(entry["index"])] = entry
                self.skipped_bytes = int(entry["skipped_bytes"])
            elif entry.get("kind") == "done":
                self.done = entry

    def _clean(self) -> None:
        """Drop what a killed run left behind: temps, uncommitted parts, uncommitted skipped lines."""
        committed = {entry["file"] for entry in self.parts.values()}
        for temp in self.out_dir.glob(TEMP_GLOB):
            temp.unlink(missing_ok=True)
        for part in self.out_dir.glob(PART_GLOB):
            if part.name not in committed:
                part.unlink()
        missing = sorted(name for name in committed if not (self.out_dir / name).exists())
        if missing:
            raise EmbedpipeError(
                f"{self.out_dir}: committed part files are missing ({', '.join(missing[:5])}); "
                "the output was modified by hand — pass --overwrite to start over"
            )
        changed = sorted(  # parts committed before sizes were recorded carry no "bytes"
            e["file"]
            for e in self.parts.values()
            if "bytes" in e and (self.out_dir / e["file"]).stat().st_size != e["bytes"]
        )
        if changed:
            raise EmbedpipeError(
                f"{self.out_dir}: committed part files were changed since they were written "
                f"({', '.join(changed[:5])}); pass --overwrite to start over"
            )
        skipped = self.out_dir / SKIPPED
        if skipped.exists() and skipped.stat().st_size != self.skipped_bytes:
            with open(skipped, "rb+") as handle:
                handle.truncate(self.skipped_bytes)
                os.fsync(handle.fileno())

    def commit(self, record: dict, skipped_lines: list[dict]) -> None:
        """Make one finished part durable (its file must already be renamed into place)."""
        skipped = self.out_dir / SKIPPED
        if skipped_lines:
            with open(skipped, "ab") as handle:
                handle.write(b"".join((json.dumps(s) + "\n").encode() for s in skipped_lines))
                handle.flush()
                os.fsync(handle.fileno())
            self.skipped_bytes = skipped.stat().st_size
        entry = {"kind": "part", **record, "skipped_bytes": self.skipped_bytes}
        _append_line(self.path, entry)
        self.parts[int(record["index"])] = entry

    def finish(self, totals: dict) -> None:
        entry = {"kind": "done", **totals}
        _append_line(self.path, entry)
        self.done = entry


def read_header(out_dir: str | os.PathLike) -> dict | None:
    """The job header of the ingest output in `out_dir` (settings and input files), or None
    when there is no readable manifest."""
    try:
        with open(Path(out_dir) / MANIFEST, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict) or header.get("kind") != "header":
        return None
    return {k: v for k, v in header.items() if k != "kind"}


def job_fingerprint(out_dir: str | os.PathLike) -> str | None:
    """A digest of the ingest job header in `out_dir` (model, settings, input files): the same
    for every part the job writes, across resumes; None without a readable manifest."""
    header = read_header(out_dir)
    if header is None:
        return None
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def remove_outputs(out_dir: Path) -> None:
    """--overwrite: delete only files this tool writes, never anything else in the directory."""
    for pattern in OWNED_GLOBS:
        for path in out_dir.glob(pattern):
            if path.name != LOCK:  # held by this process while it starts over
                path.unlink()
