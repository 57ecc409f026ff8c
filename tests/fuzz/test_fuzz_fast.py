"""The fixed-seed slice of the fuzz campaign that runs with every `make test`.

A few hundred mutated GGUF, index and corpus files, each opened in a worker subprocess: any
signal, hang, traceback, non-finite result or unfit message fails the family's test with the
cases listed (replay one with `python -m tests.fuzz.campaign` and the same seed, or open the
file named in the case). `make fuzz` runs the same machinery for as long as FUZZ_SECONDS.
"""

from __future__ import annotations

import json

import pytest

from tests.fuzz.mutate import plan
from tests.fuzz.runner import FAILURES, run_cases, tally

SEED = 20261129
COUNTS = {"gguf": 90, "index": 130, "ingest": 20}


@pytest.fixture(scope="module")
def outcomes(fuzz_seeds, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-slice")
    cases = plan(fuzz_seeds, work, COUNTS["gguf"], COUNTS["index"], COUNTS["ingest"], SEED)
    return run_cases(cases, timeout=60.0, batch=60)


def _family(outcomes, targets):
    return [r for r in outcomes if r["case"]["target"] in targets]


@pytest.mark.parametrize(
    "family,targets",
    [
        ("gguf", ("gguf",)),
        ("index", ("index", "annoy_spotify")),
        ("ingest", ("ingest",)),
    ],
)
def test_no_crash_hang_traceback_or_silent_nan(outcomes, family, targets):
    results = _family(outcomes, targets)
    assert len(results) == COUNTS[family]
    bad = [r for r in results if r["outcome"] in FAILURES or r["outcome"] == "lost"]
    listing = "\n".join(f"{r['outcome']}: {json.dumps(r['case'])[:300]} -> {r['detail'][:300]}" for r in bad[:20])
    assert not bad, f"{len(bad)} of {len(results)} {family} cases failed {dict(tally(results))}:\n{listing}"


def test_the_slice_reaches_both_outcomes(outcomes):
    """A slice where every mutant is rejected (or none is) would prove nothing about the other
    path: both clean errors and successful opens must occur in each family."""
    for targets in (("gguf",), ("index", "annoy_spotify"), ("ingest",)):
        counts = tally(_family(outcomes, targets))
        assert counts["clean"] > 0 and counts["ok"] > 0, (targets, dict(counts))
