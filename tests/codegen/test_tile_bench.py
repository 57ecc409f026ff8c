"""`codegen.tile_bench`: register tiles compared in one process, each against the ISA's own."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.codegen import tile_bench
from embedpipe.codegen.ir_q8 import IntTile
from embedpipe.codegen.isa import detect_isa
from embedpipe.codegen.library import TILES, KernelLibrary
from embedpipe.errors import EmbedpipeError

SHAPES = ((64, 40), (96, 17))  # ragged: N not a whole panel


@pytest.mark.parametrize(
    "text, tile",
    [
        ("4x3", IntTile(4, 3, 64)),
        ("3x3", IntTile(3, 3, 63)),
        ("5x2/60", IntTile(5, 2, 60)),
        (" 1x1 ", IntTile(1, 1, 64)),
    ],
)
def test_parse_tile(text, tile):
    assert tile_bench.parse_tile(text) == tile


@pytest.mark.parametrize("text", ["4", "4x", "x3", "0x3", "4x0", "5x4", "4x3/62", "4x3/2", "4x3x2", "-1x3"])
def test_parse_tile_refuses_what_is_no_tile(text):
    with pytest.raises(EmbedpipeError, match="tile"):
        tile_bench.parse_tile(text)


def test_every_tile_is_timed_against_the_isas_own():
    own = TILES[detect_isa().name][0]
    lines = []
    summary = tile_bench.run_tile_bench(
        [IntTile(2, 2, 64), own], tokens=(3, 9), rounds=2, shapes=SHAPES, report=lines.append
    )
    rows = summary["results"]
    assert summary["baseline"] == tile_bench.label(own)
    # the ISA's own tile is listed once, first, whatever the order given
    assert [r["tile"] for r in rows[:2]] == [tile_bench.label(own), "2x2/64"]
    assert len(rows) == 2 * len(SHAPES) * 2
    assert all(r["ratio"] == 1.0 for r in rows if r["tile"] == summary["baseline"])
    assert all(r["ratio"] > 0 and r["ms"] > 0 and r["gops"] > 0 for r in rows)
    assert "ratios to the ISA's own tile" in lines[0] and len(lines) == 2 + len(rows)


def test_a_tile_that_computes_other_values_is_an_error(monkeypatch):
    real = KernelLibrary.prepare_matmul

    def prepare(self, *args, **kw):
        mm = real(self, *args, **kw)
        if self.int_tile.mr != 2:
            return mm

        def off_by_one(x, y):
            mm(x, y)
            y[0, 0] = np.nextafter(y[0, 0], np.float32(np.inf))

        return off_by_one

    monkeypatch.setattr(KernelLibrary, "prepare_matmul", prepare)
    with pytest.raises(EmbedpipeError, match="computes other values"):
        tile_bench.run_tile_bench([IntTile(2, 2, 64)], tokens=(3,), rounds=1, shapes=SHAPES, report=lambda _: None)


@pytest.mark.parametrize("qtype, message", [("F16", "float kernels"), ("Q9_9", "unknown weight type")])
def test_types_without_int_tiles_are_refused(qtype, message):
    with pytest.raises(EmbedpipeError, match=message):
        tile_bench.run_tile_bench([], qtype=qtype, report=lambda _: None)
