"""The index container: round trip, atomic write, and clear errors for damaged files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes import IndexFileError, build_index, load_index
from embedpipe.indexes.format import MAGIC, read_container, write_container

from .helpers import uniform


def test_round_trip_sections_are_mmapped_views(tmp_path):
    path = tmp_path / "c.bin"
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    b = np.linspace(0, 1, 7, dtype=np.float32)
    write_container(path, {"type": "x", "n": 3}, {"a": a, "b": b})
    header, sec = read_container(path)
    assert header["type"] == "x" and header["n"] == 3
    np.testing.assert_array_equal(sec["a"], a)
    np.testing.assert_array_equal(sec["b"], b)
    assert not sec["a"].flags.writeable and not sec["a"].flags.owndata
    assert sec["a"].ctypes.data % 64 == 0 and sec["b"].ctypes.data % 64 == 0
    assert not list(tmp_path.glob(".*tmp"))  # temp file renamed away


@pytest.fixture
def index_file(tmp_path):
    path = tmp_path / "i.idx"
    build_index(uniform(50, 32), kind="brute", quant="int8").save(path)
    return path


def test_flipped_payload_byte_is_a_checksum_error(index_file):
    data = bytearray(index_file.read_bytes())
    data[-10] ^= 0x40
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum mismatch") as err:
        load_index(index_file)
    assert str(index_file) in str(err.value)
    load_index(index_file, verify=False)  # opt-out still opens it


def test_flipped_header_byte_is_a_checksum_error(index_file):
    data = bytearray(index_file.read_bytes())
    data[40] ^= 0x01
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="header checksum"):
        read_container(index_file)


@pytest.mark.parametrize("keep", [0, 10, 30, -5])
def test_truncated_file(index_file, keep):
    data = index_file.read_bytes()
    index_file.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(EmbedpipeError, match="truncated|magic"):
        load_index(index_file)


def test_wrong_magic(index_file):
    data = bytearray(index_file.read_bytes())
    data[:8] = b"NOTANIDX"
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="not an embedpipe index"):
        read_container(index_file)


def test_wrong_version(index_file):
    data = bytearray(index_file.read_bytes())
    data[8:12] = struct.pack("<I", 99)
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="version 99"):
        load_index(index_file)


def test_missing_and_wrong_type(tmp_path, index_file):
    with pytest.raises(IndexFileError, match="no such"):
        load_index(tmp_path / "nope.idx")
    with pytest.raises(IndexFileError, match="is a directory, not an index file"):  # e.g. ingest output
        load_index(tmp_path)
    with pytest.raises(IndexFileError, match="expected 'hnsw'"):
        read_container(index_file, expected_type="hnsw")
    assert index_file.read_bytes().startswith(MAGIC)
