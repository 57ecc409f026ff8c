"""The fuzz worker: runs cases one after another and prints one JSON line per case.

Protocol (stdout, line-buffered): ``{"start": i}`` before case i, then ``{"done": i,
"outcome": ..., "detail": ...}``. A case that kills the process (signal) or never finishes
(hang) is recognised by the parent as the last ``start`` without a ``done``.

Outcomes: ``ok``, ``clean`` (an EmbedpipeError whose message is one printable line of at most
300 characters), ``bad_message`` (an EmbedpipeError with any other message), ``traceback``
(any other exception), ``nonfinite`` (no error, but NaN/inf in the output).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import warnings

MAX_MESSAGE = 300
MEMORY_LIMIT = 3 << 30  # a huge allocation becomes MemoryError, not the OOM killer


def message_problem(msg: str) -> str | None:
    """Why `msg` is not an acceptable user-facing error line (None when it is)."""
    if len(msg) > MAX_MESSAGE:
        return f"{len(msg)} chars"
    if not msg.isprintable():
        return "not printable"
    if not msg.strip():
        return "empty"
    return None


def classify(exc: BaseException | None, arrays) -> tuple[str, str]:
    import numpy as np

    from embedpipe.errors import EmbedpipeError

    if exc is None:
        for a in arrays:
            a = np.asarray(a)
            if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
                return "nonfinite", f"{int((~np.isfinite(a)).sum())} of {a.size} values"
        return "ok", ""
    msg = str(exc)
    if isinstance(exc, EmbedpipeError):
        problem = message_problem(msg)
        if problem:
            return "bad_message", f"{type(exc).__name__} ({problem}): {msg[:200]!r}"
        return "clean", msg
    return "traceback", f"{type(exc).__name__}: {msg[:300]!r}"


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    from tests.fuzz.targets import TARGETS

    cases = json.loads(open(sys.argv[1]).read())
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    for i in range(first, len(cases)):
        case = cases[i]
        print(json.dumps({"start": i}), flush=True)
        exc, arrays = None, []
        try:
            arrays = TARGETS[case["target"]](case)
        except (Exception, MemoryError, RecursionError) as e:  # classified, not hidden
            exc = e
        outcome, detail = classify(exc, arrays)
        print(json.dumps({"done": i, "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
