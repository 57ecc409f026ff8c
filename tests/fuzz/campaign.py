"""`python -m tests.fuzz.campaign`: build seeds, mutate, run every case isolated, report.

    FUZZ_SECONDS=600 make fuzz        # rounds of fresh cases until the time budget is spent
    python -m tests.fuzz.campaign --gguf 1000 --index 1000 --ingest 100 --json out.json

Exit status 1 when any case ended in a signal, a hang, a traceback, non-finite output or an
unfit message; the report lists those cases (kind, seed, the edit) so each can be replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.fuzz.mutate import plan
from tests.fuzz.mutate_index import add_slack
from tests.fuzz.runner import FAILURES, run_cases
from tests.fuzz.seeds import build_seeds


def prepare(work: Path):
    seeds = build_seeds(work / "seeds")
    from embedpipe.indexes.format import is_container

    for p in seeds.indexes:
        add_slack(p if is_container(p) else Path(str(p) + ".ids"))
    return seeds


def summarize(results: list[dict]) -> dict:
    by_family: dict[str, Counter] = {}
    for r in results:
        fam = r["case"]["target"]
        by_family.setdefault(fam, Counter())[r["outcome"]] += 1
    return {fam: dict(c) for fam, c in by_family.items()}


def run_round(
    work: Path, seeds, n_gguf: int, n_index: int, n_ingest: int, seed: int, timeout: float, log
) -> list[dict]:
    cases = plan(seeds, work, n_gguf, n_index, n_ingest, seed)
    return run_cases(cases, timeout=timeout, log=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=int, default=200)
    ap.add_argument("--index", type=int, default=200)
    ap.add_argument("--ingest", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("FUZZ_SECONDS", 0)),
        help="keep running fresh rounds until this budget is spent (0: one round)",
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a case counts as a hang")
    ap.add_argument("--json", type=Path, help="write every case and its outcome here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    start = time.monotonic()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="embedpipe-fuzz-work-") as tmp:
        seeds = prepare(Path(tmp))
        rnd = 0
        while True:
            work = Path(tmp) / f"round{rnd}"
            work.mkdir()
            results += run_round(work, seeds, args.gguf, args.index, args.ingest, args.seed + rnd, args.timeout, log)
            rnd += 1
            if time.monotonic() - start >= args.seconds:
                break
    report = summarize(results)
    failures = [r for r in results if r["outcome"] in FAILURES]
    print(json.dumps({"cases": len(results), "seed": args.seed, "rounds": rnd, "outcomes": report}, indent=1))
    for r in failures[:200]:
        print(f"{r['outcome']:11s} {json.dumps(r['case'])[:260]} -> {r['detail'][:200]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
