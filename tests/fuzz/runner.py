"""Run fuzz cases in worker subprocesses; a signal or a hang is an outcome, not a lost run.

Cases go to a worker in batches (imports and JIT kernels load once per batch). When the
worker dies or stops answering, the case it had started is re-run alone in a fresh process
so the signal or hang is pinned on the case that causes it, and the batch resumes after it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAILURES = ("signal", "hang", "traceback", "nonfinite", "bad_message")


def _env(cache: Path) -> dict[str, str]:
    from embedpipe.runtime.cache_root import KERNELS_ENV, kernels_dir

    env = dict(os.environ)
    env.setdefault(KERNELS_ENV, str(kernels_dir()))  # before the cache root moves: warm kernels
    # EMBEDPIPE_FUZZ_CODE: another checkout whose embedpipe the workers import (a baseline run)
    code = os.environ.get("EMBEDPIPE_FUZZ_CODE")
    env.update(
        PYTHONPATH=f"{code}{os.pathsep}{ROOT}" if code else str(ROOT),
        EMBEDPIPE_CACHE_DIR=str(cache),
        EMBEDPIPE_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    return env


def _run_from(
    case_file: Path, first: int, timeout: float, env: dict, results: dict[int, dict], only_one: bool = False
) -> tuple[int | None, str, str]:
    """Run cases from `first` until the worker ends; returns (index of a case that killed or
    hung the worker or None, 'signal'|'hang'|'', detail)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fuzz.worker", str(case_file), str(first)],
        cwd=os.environ.get("EMBEDPIPE_FUZZ_CODE", ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    started: int | None = None
    deadline = time.monotonic() + timeout + 20  # the first case also pays for imports
    buf = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return started, "hang", f"no answer within {timeout:.0f} s"
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                rc = proc.wait()
                if started is not None:
                    how = f"signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exit {rc}"
                    return started, "signal", how
                return None, "", ""
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "start" in msg:
                    started = msg["start"]
                    deadline = time.monotonic() + timeout
                else:
                    results[msg["done"]] = {"outcome": msg["outcome"], "detail": msg["detail"]}
                    started = None
                    if only_one:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        return None, "", ""
    finally:
        sel.close()
        proc.stdout.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_cases(cases: list[dict], timeout: float = 20.0, batch: int = 40, log=None) -> list[dict]:
    """Outcome of every case: dict(case, outcome, detail), in input order."""
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="embedpipe-fuzz-") as tmp:
        env = _env(Path(tmp) / "cache")
        for lo in range(0, len(cases), batch):
            chunk = cases[lo : lo + batch]
            case_file = Path(tmp) / f"cases-{lo}.json"
            case_file.write_text(json.dumps(chunk))
            local: dict[int, dict] = {}
            first = 0
            while first < len(chunk):
                bad, kind, detail = _run_from(case_file, first, timeout, env, local)
                if bad is None:
                    break
                # pin it: the same case alone in a fresh process
                alone: dict[int, dict] = {}
                bad2, kind2, detail2 = _run_from(case_file, bad, timeout, env, alone, only_one=True)
                if bad2 == bad:
                    local[bad] = {"outcome": kind2, "detail": detail2}
                else:  # only crashes after earlier cases: still a failure, marked as such
                    local[bad] = {
                        "outcome": kind,
                        "detail": f"{detail} (in a batch only; alone: {alone.get(bad, {}).get('outcome')})",
                    }
                first = bad + 1
            for i, case in enumerate(chunk):
                res = local.get(i, {"outcome": "lost", "detail": "no result"})
                results[lo + i] = dict(case=case, **res)
            if log:
                log(f"{lo + len(chunk)}/{len(cases)} cases: {dict(tally(results.values()))}")
    return [results[i] for i in range(len(cases))]


def tally(results) -> Counter:
    return Counter(r["outcome"] for r in results)
