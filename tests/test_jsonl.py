"""JSON-lines reading: blank lines, CRLF, and errors that name file and line."""

from __future__ import annotations

import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.jsonl import iter_jsonl


class CustomError(EmbedpipeError):
    pass


def test_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n\r\n{"text": "b\\r"}\n')
    assert list(iter_jsonl(path)) == [(1, {"text": "a"}), (3, {"text": "b\r"})]


@pytest.mark.parametrize(
    "data, message",
    [
        (b'{"text": 1}\n{oops\n', r"rows.jsonl:2: not valid JSON"),
        (b'{"text": "\xff\xfe"}\n', r"rows.jsonl: not UTF-8 text"),
    ],
)
def test_errors_name_the_place(tmp_path, data, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    with pytest.raises(CustomError, match=message):
        list(iter_jsonl(path, CustomError))


def test_missing_file(tmp_path):
    with pytest.raises(EmbedpipeError, match="cannot read"):
        list(iter_jsonl(tmp_path / "absent.jsonl"))
