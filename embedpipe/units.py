"""Human-sized quantities on the command line: "4MB", "512k", "2GiB" -> bytes."""

from __future__ import annotations

import re

from embedpipe.errors import EmbedpipeError

# Decimal and binary suffixes (case-insensitive); a bare number is bytes.
SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes in `text`; raises EmbedpipeError naming `what` for anything else."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in SIZE_UNITS:
            raise EmbedpipeError(f"{what}: cannot read {text!r} as a size; write e.g. 4MB, 512KiB or 1000000")
        value = int(float(match.group(1)) * SIZE_UNITS[unit])
    if value <= 0:
        raise EmbedpipeError(f"{what} must be positive, got {text!r}")
    return value
