"""`embedpipe bench startup`: what a user waits for and pays in memory per command.

Each command runs as a fresh subprocess (`python -m embedpipe ...`), as a user runs it, after one
warm-up run that fills the caches a first run builds (compiled kernels, repacked weights,
tokenizer model, bytecode). Reported per command: median wall seconds, median CPU seconds (user + system,
robust to a loaded machine) and median peak RSS (the child's own high-water mark from wait4).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from embedpipe.runtime.bench import machine_info

#: What issue 16 asks of a warm start on the dev VM.
TARGETS = {"help": {"wall_s": 0.15}, "embed": {"wall_s": 0.4, "peak_rss_mb": 250}, "search": {"wall_s": 0.4}}
CORPUS = [
    "how to bake sourdough bread at home",
    "vector indexes for approximate nearest neighbour search",
    "streaming parquet files into an embedding pipeline",
    "the quick brown fox jumps over the lazy dog",
    "quantized matrix multiplication on avx-512",
    "what is the capital of france",
    "a recipe for tomato soup with basil",
    "how do graph indexes like hnsw find neighbours",
]


@dataclass
class CommandResult:
    command: str
    argv: list[str]
    runs: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


# Runs `python -m embedpipe ARGS` and, at exit, writes the process's own peak RSS (VmHWM) to
# the file named first: a forked child's ru_maxrss starts at its parent's size (the bench
# process holds a model), so the child has to report its own high-water mark.
_WRAPPER = """
import atexit, runpy, sys
out = sys.argv[1]
sys.argv = ["embedpipe", *sys.argv[2:]]
def report():
    with open("/proc/self/status") as fh:
        kb = next((line.split()[1] for line in fh if line.startswith("VmHWM:")), "")
    with open(out, "w") as fh:
        fh.write(kb)
atexit.register(report)
runpy.run_module("embedpipe", run_name="__main__", alter_sys=True)
"""


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one `embedpipe ARGS` process; RuntimeError when it fails."""
    with tempfile.NamedTemporaryFile(prefix="embedpipe-hwm-", delete=False) as fh:
        hwm_file = Path(fh.name)
    try:
        argv = [sys.executable, "-c", _WRAPPER, str(hwm_file), *args]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if proc.stderr:
            proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code != 0:
            raise RuntimeError(f"embedpipe {' '.join(args)} exited {code}: {err.strip()[-300:]}")
        text = hwm_file.read_text().strip()
        rss = int(text) / 1024 if text.isdigit() else usage.ru_maxrss / 1024
        return wall, usage.ru_utime + usage.ru_stime, rss
    finally:
        hwm_file.unlink(missing_ok=True)


def prepare_index(model: str, work: Path) -> Path:
    """A small brute index of ``CORPUS`` embedded by ``model`` (what `search` loads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedpipe.pipeline import IngestConfig, ingest

    src = work / "corpus.parquet"
    pq.write_table(pa.table({"text": CORPUS, "id": [f"d{i}" for i in range(len(CORPUS))]}), src)
    ingest(IngestConfig(inputs=[str(src)], output=str(work / "emb"), model=model, id_col="id", cache=False))
    index = work / "corpus.idx"
    run_once(["build-index", str(work / "emb"), "-o", str(index)], dict(os.environ))
    return index


def run_startup_bench(model: str, runs: int = 5, report: Callable[[str], None] = print) -> dict:
    # a warm start includes compiled bytecode: an installed package has it, and a shell that
    # set PYTHONDONTWRITEBYTECODE would otherwise time the compiler on every run
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="embedpipe-startup-") as tmp:
        index = prepare_index(model, Path(tmp))
        from embedpipe.runtime.gguf_file import GGUFModelFile

        mf = GGUFModelFile(model)
        dim = str(mf.require(f"{mf.architecture}.embedding_length"))
        del mf
        commands = {
            "help": ["--help"],
            "embed": ["embed", "--model", model, "--dim", dim, "x"],
            "search": ["search", str(index), "q"],
        }
        results = []
        for name, argv in commands.items():
            run_once(argv, env)  # warm-up: caches filled, files in the page cache
            samples = [run_once(argv, env) for _ in range(runs)]
            res = CommandResult(
                name,
                ["embedpipe", *argv],
                runs,
                statistics.median(s[0] for s in samples),
                statistics.median(s[1] for s in samples),
                statistics.median(s[2] for s in samples),
            )
            results.append(asdict(res))
            report(format_row(res))
    return {"machine": machine_info(), "model": model, "runs": runs, "results": results, "targets": TARGETS}


def format_row(r: CommandResult) -> str:
    target = TARGETS.get(r.command, {})
    goals = ", ".join(f"{k} <= {v}" for k, v in target.items())
    return (
        f"{r.command:7} wall {r.wall_s:6.3f} s  cpu {r.cpu_s:6.3f} s  peak RSS {r.peak_rss_mb:6.0f} MB"
        f"  (median of {r.runs}; target {goals or '-'})  {' '.join(r.argv)}"
    )
