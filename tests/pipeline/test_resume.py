"""Resume: kill -9 at random moments, rerun the same command, get exactly the clean run's output."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.manifest import HEADER_TEMP, LOCK, MANIFEST, ResumeRefused
from tests.pipeline.conftest import make_texts, read_out

REPO = Path(__file__).resolve().parents[2]


def kill_corpus(tmp_path: Path) -> Path:
    texts = make_texts(160, seed=9, max_words=4)
    texts[17], texts[55], texts[101] = None, "  ", " ".join(["the lazy dog"] * 25)
    path = tmp_path / "kill.parquet"
    pq.write_table(pa.table({"text": texts, "n": list(range(160))}), path, row_group_size=33)
    return path


def cli(corpus: Path, out: Path, model: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from embedpipe.cli.app import main; main()",
        "ingest",
        str(corpus),
        "-o",
        str(out),
        "--model",
        str(model),
        "--backend",
        "numpy",
        "--cache-dir",
        str(cache),
        "--part-rows",
        "16",
        "--max-tokens",
        "48",
        "--keep",
        "n",
        "--no-progress",
        *extra,
    ]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def snapshot(out: Path) -> tuple:
    table = read_out(out)
    skipped = (out / "_skipped.jsonl").read_text()
    return table.to_pylist(), skipped, sorted(p.name for p in out.glob("part-*.parquet"))


def clean_run(tmp_path, tiny_gguf) -> tuple[Path, tuple, float]:
    corpus = kill_corpus(tmp_path)
    t0 = time.perf_counter()
    subprocess.run(
        cli(corpus, tmp_path / "clean", tiny_gguf, tmp_path / "cache-clean"), check=True, env=env(), capture_output=True
    )
    return corpus, snapshot(tmp_path / "clean"), time.perf_counter() - t0


def kill_and_resume(tmp_path, corpus, tiny_gguf, trial: int, delays: list[float]) -> tuple:
    out, cache = tmp_path / f"run{trial}", tmp_path / f"cache{trial}"
    for delay in delays:
        proc = subprocess.Popen(
            cli(corpus, out, tiny_gguf, cache), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rerun = subprocess.run(cli(corpus, out, tiny_gguf, cache), env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, f"rerun after kills at {delays} failed: {rerun.stderr[-2000:]}"
    return snapshot(out)


def check_kills(tmp_path, tiny_gguf, trials: int, seed: int) -> None:
    corpus, clean, seconds = clean_run(tmp_path, tiny_gguf)
    assert clean[0] and clean[1].count("\n") == 2
    rng = random.Random(seed)
    for trial in range(trials):
        delays = [rng.uniform(0.2, seconds) for _ in range(rng.choice([1, 1, 2]))]
        assert kill_and_resume(tmp_path, corpus, tiny_gguf, trial, delays) == clean, f"trial {trial} delays {delays}"


def test_kill_and_resume_equals_clean_run(tmp_path, tiny_gguf):
    check_kills(tmp_path, tiny_gguf, trials=2, seed=1)


@pytest.mark.slow
def test_kill_at_20_random_moments(tmp_path, tiny_gguf):
    check_kills(tmp_path, tiny_gguf, trials=20, seed=2)


def test_orphans_removed_and_torn_manifest_line(run, corpus, tmp_path):
    out = tmp_path / "o"
    _, full = run(corpus, out=out, part_rows=40, cache=False)
    # fake a kill: last part not committed, a temp file, a torn manifest line
    lines = (out / MANIFEST).read_text().splitlines(keepends=True)
    (out / MANIFEST).write_text("".join(lines[:-2]) + lines[-2][:10])
    (out / ".part-000009.parquet.tmp123").write_bytes(b"junk")
    (out / "part-000099.parquet").write_bytes(b"junk")
    summary, again = run(corpus, out=out, part_rows=40, cache=False, resume=True)
    assert summary.resumed and summary.run_rows_in == 40
    assert again.to_pylist() == full.to_pylist()
    assert not (out / "part-000099.parquet").exists() and not list(out.glob(".*tmp*"))


def test_kill_before_the_header_is_in_place_starts_afresh(run, corpus, tmp_path):
    """A kill between writing the header's temp file and renaming it leaves the lock file and
    a (maybe torn) temp: the rerun must start the job, not call the directory foreign."""
    _, full = run(corpus, out=tmp_path / "clean", cache=False)
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK).touch()
    (out / HEADER_TEMP).write_text('{"kind": "hea')
    summary, again = run(corpus, out=out, cache=False)
    assert not summary.resumed and summary.output_rows == 120
    assert again.to_pylist() == full.to_pylist()
    assert not (out / HEADER_TEMP).exists()


def test_same_command_after_completion_does_nothing(run, corpus, tmp_path):
    out = tmp_path / "o"
    run(corpus, out=out, cache=False)
    summary, _ = run(corpus, out=out, cache=False)
    assert summary.already_complete and summary.run_rows_in == 0 and summary.output_rows == 120


def test_a_committed_part_changed_since_is_detected_not_called_complete(run, corpus, tmp_path):
    """A part overwritten by another tool (say, an index written over it) was reported as a
    finished job."""
    out = tmp_path / "o"
    run(corpus, out=out, cache=False, part_rows=50)
    part = sorted(out.glob("part-*.parquet"))[1]
    part.write_bytes(b"EMBPIDX" + part.read_bytes()[:100])
    with pytest.raises(EmbedpipeError, match=rf"were changed since they were written \({part.name}\).*--overwrite"):
        run(corpus, out=out, cache=False, part_rows=50)
    summary, table = run(corpus, out=out, cache=False, part_rows=50, overwrite=True)
    assert summary.output_rows == 120 and table.num_rows == 120


@pytest.mark.parametrize("change", [{"task": "query"}, {"dim": None, "max_tokens": 40}, {"keep": ["doc"]}])
def test_resume_with_other_settings_is_refused(run, corpus, tmp_path, change):
    out = tmp_path / "o"
    run(corpus, out=out, cache=False)
    with pytest.raises(ResumeRefused, match="refusing to resume"):
        run(corpus, out=out, cache=False, **change)


def test_resume_with_other_model_is_refused(run, corpus, tmp_path, tiny_model_q8):
    from embedpipe.runtime.embedder import Embedder

    out = tmp_path / "o"
    run(corpus, out=out, cache=False)
    with pytest.raises(ResumeRefused, match="model_sha256"):
        run(corpus, out=out, cache=False, embedder=Embedder.load(tiny_model_q8.path, backend="numpy"))


def test_changed_input_is_refused_and_resume_needs_a_job(run, corpus, tmp_path):
    out = tmp_path / "o"
    run(corpus, out=out, cache=False)
    pq.write_table(pa.table({"text": ["other"]}), corpus)
    with pytest.raises(ResumeRefused, match="input files changed"):
        run(corpus, out=out, cache=False)
    with pytest.raises(EmbedpipeError, match="nothing to resume"):
        run(corpus, out=tmp_path / "fresh", resume=True)


def test_second_writer_is_refused(run, corpus, tmp_path):
    from embedpipe.pipeline.manifest import Manifest

    out = tmp_path / "o"
    holder = Manifest.open(out, {"x": 1})
    try:
        with pytest.raises(EmbedpipeError, match="another ingest"):
            run(corpus, out=out, overwrite=True)
    finally:
        holder.close()
    summary, _ = run(corpus, out=out, overwrite=True, cache=False)
    assert summary.output_rows == 120
