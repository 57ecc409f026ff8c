"""The read-bandwidth kernel: XOR of every word, equal to its numpy twin on every ISA."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen.bandwidth import XOR_WORDS, read_bandwidth, xor_words_reference
from embedpipe.codegen.isa import runnable_isas


@pytest.mark.parametrize("isa", runnable_isas(), ids=lambda s: s.name)
@pytest.mark.parametrize("pages,threads", [(1, 1), (3, 2), (17, 4), (64, 3)])
def test_xor_words_matches_numpy(isa, pages, threads):
    buf = np.random.default_rng(pages).integers(0, 256, pages * 4096, dtype=np.uint8)
    assert XOR_WORDS.on(isa)(buf, threads) == xor_words_reference(buf)


def test_buffer_must_be_whole_pages():
    with pytest.raises(ValueError, match="multiple of 4096"):
        XOR_WORDS(np.zeros(4097, np.uint8), 1)


def test_probe_reports_a_rate():
    assert read_bandwidth(1, megabytes=4, repeats=1) > 0
