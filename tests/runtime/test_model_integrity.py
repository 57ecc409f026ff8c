"""The sampled integrity fingerprint: same values as the one-pass formula (sidecars written
before stay valid), pages released as it goes, edits caught."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from embedpipe.runtime import model_integrity as mi


def _one_pass(raw: np.ndarray) -> int:
    """The fingerprint as first defined: all sampled heads in one copy."""
    full = len(raw) // mi.STRIDE
    head = np.ascontiguousarray(raw[: full * mi.STRIDE].reshape(full, mi.STRIDE)[:, : mi.SAMPLE_BYTES])
    crc = zlib.crc32(raw[full * mi.STRIDE :][: mi.SAMPLE_BYTES], zlib.crc32(head))
    return zlib.crc32(raw[-mi.SAMPLE_BYTES :], crc)


@pytest.mark.parametrize("size", [100, 8192, 8192 * 5 + 17, 8192 * 9])
def test_windowed_crc_equals_the_one_pass_formula(size, monkeypatch):
    monkeypatch.setattr(mi, "WINDOW", 2 * mi.STRIDE)  # several windows even for small tensors
    raw = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    released = []
    assert mi._crc(raw, released.append) == _one_pass(raw)
    assert sum(len(v) for v in released) == size // mi.STRIDE * mi.STRIDE


def test_fingerprint_is_computed_once_and_catches_a_changed_sample(tiny_model_q8, tmp_path):
    import shutil

    from embedpipe.runtime.gguf_file import GGUFModelFile

    path = tmp_path / "m.gguf"
    shutil.copyfile(tiny_model_q8.path, path)
    mf = GGUFModelFile(path)
    first = mi.fingerprint_digest(mf)
    assert mi.fingerprint(mf) is mi.fingerprint(mf)
    offset = mf.tensors["blk.0.attn_q.weight"].raw.ctypes.data - np.frombuffer(mf._parsed.mm, np.uint8).ctypes.data
    del mf
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x01
    path.write_bytes(bytes(data))
    assert mi.fingerprint_digest(GGUFModelFile(path)) != first
