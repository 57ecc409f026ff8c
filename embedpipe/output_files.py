"""The one check every command runs on a file it will write, before it does any work.

A run that embeds, builds or sweeps for minutes and then cannot write its result has lost that
time; so the output path is checked first: a known extension, not a directory, in a directory
that exists, and not one of the command's own input files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from embedpipe.errors import EmbedpipeError


def check_output_file(
    path: str | os.PathLike,
    extensions: Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """`path` as a Path once it can be written as the command's output; EmbedpipeError naming it
    otherwise. `extensions` (".json", …) are the accepted suffixes, any when None."""
    path = Path(path)
    known = tuple(extensions) if extensions is not None else None
    if known is not None and path.suffix.lower() not in known:
        raise EmbedpipeError(f"{path}: unknown output extension; use one of {', '.join(known)}")
    if path.is_dir():
        raise EmbedpipeError(
            f"{path}: is a directory; name a file" + (f" ending in {', '.join(known)}" if known else "")
        )
    if not path.parent.is_dir():
        raise EmbedpipeError(f"{path.parent}: no such directory for the output {path.name}")
    for source in inputs:
        if Path(source).is_file() and Path(source).resolve() == path.resolve():
            raise EmbedpipeError(f"{path}: is the input file; write the output elsewhere")
    return path
