"""Turn record batches into validated Python rows: id, text, title and the reason a row is bad.

Bad rows are data, not crashes: null/empty/non-string text, bytes that are not UTF-8 (binary
columns, lone surrogates), a null id. Each gets a reason from the table below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from embedpipe.pipeline.readers import BAD_COLUMN

REASONS: dict[str, str] = {
    "null_text": "the text is null",
    "empty": "the text is empty or only whitespace",
    "non_string": "the text is not a string",
    "invalid_utf8": "the text is not valid UTF-8",
    "invalid_json": "the line is not valid JSON",
    "not_an_object": "the JSON line is not an object",
    "null_id": "the id is null",
    "invalid_id": "the id is not valid UTF-8 text or does not fit an int64",
    "duplicate_id": "an earlier row has the same id",
    "invalid_title": "the title is not valid UTF-8 text",
    "prompt_too_long": "the prompt with its title alone exceeds max_tokens",
}


def _is_texty(t: pa.DataType) -> bool:
    checks = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_string_view,
        pa.types.is_binary_view,
    )
    return any(check(t) for check in checks)


def decode_strings(arr: pa.Array) -> tuple[list[str | None], list[str | None]]:
    """(values, reasons): values decoded strictly as UTF-8; reason null_text / non_string / invalid_utf8."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    if pa.types.is_null(arr.type):
        return [None] * n, ["null_text"] * n
    if not _is_texty(arr.type):
        nulls = arr.is_null().to_pylist()
        return [None] * n, ["null_text" if z else "non_string" for z in nulls]
    values: list[str | None] = []
    reasons: list[str | None] = []
    for raw in arr.cast(pa.large_binary()).to_pylist():
        if raw is None:
            values.append(None)
            reasons.append("null_text")
            continue
        try:
            values.append(raw.decode("utf-8"))
            reasons.append(None)
        except UnicodeDecodeError:
            values.append(None)
            reasons.append("invalid_utf8")
    return values, reasons


INT64_RANGE = (-(1 << 63), (1 << 63) - 1)


def decode_ids(col: pa.Array) -> tuple[list, list[str | None]]:
    """(ids, reasons): text ids decoded strictly (invalid UTF-8 -> invalid_id), integer ids
    checked against int64, nulls -> null_id."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if _is_texty(col.type):
        ids, reasons = decode_strings(col)
        return ids, [None if r is None else "null_id" if r == "null_text" else "invalid_id" for r in reasons]
    ids = col.to_pylist()
    reasons: list[str | None] = []
    for i in ids:
        if i is None:
            reasons.append("null_id")
        elif isinstance(i, int) and not INT64_RANGE[0] <= i <= INT64_RANGE[1]:
            reasons.append("invalid_id")
        else:
            reasons.append(None)
    return ids, reasons


@dataclass
class Rows:
    """One window of input rows, in input order, with per-row provenance for messages."""

    ids: list = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    titles: list[str | None] | None = None
    reasons: list[str | None] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # global row numbers
    paths: list[Path] = field(default_factory=list)


def extract(
    batches: list[tuple[int, Path, pa.RecordBatch]], text_col: str, id_col: str | None, title_col: str | None
) -> Rows:
    out = Rows(titles=[] if title_col else None)
    for first, path, batch in batches:
        n = batch.num_rows
        texts, reasons = decode_strings(batch.column(text_col))
        if BAD_COLUMN in batch.schema.names:
            known = batch.column(BAD_COLUMN).to_pylist()
            reasons = [k or r for k, r in zip(known, reasons)]
        reasons = [r if r or t.strip() else "empty" for t, r in zip(texts, reasons)]
        if id_col:
            ids, id_reasons = decode_ids(batch.column(id_col))
            reasons = [r or ir for r, ir in zip(reasons, id_reasons)]
        else:
            ids = list(range(first, first + n))
        if title_col:
            titles, t_reasons = decode_strings(batch.column(title_col))
            reasons = [
                r or ("invalid_title" if tr not in (None, "null_text") else None) for r, tr in zip(reasons, t_reasons)
            ]
            out.titles.extend(t or None for t in titles)  # CSV reads a blank cell as "": no title
        out.ids.extend(ids)
        out.texts.extend(texts)
        out.reasons.extend(reasons)
        out.rows.extend(range(first, first + n))
        out.paths.extend([path] * n)
    return out
