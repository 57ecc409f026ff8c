"""Row gather (``codegen.gather``) on every runnable ISA: bit-identical to the numpy lookup
(``quant_formats`` dequantization, then the scale), indices checked before any native call,
and a recorded step that takes each replay's indices."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from embedpipe.codegen import KernelInputError, runnable_isas
from embedpipe.codegen.gather import GATHER, GatherTable, gather_reference, record_per_run
from embedpipe.codegen.ggml_types import GGMLQuantizationType as Q
from embedpipe.codegen.program import Program
from embedpipe.codegen.quant_formats import FORMATS

ISAS = runnable_isas()


def table(qtype: Q, rows: int, d: int, seed: int = 0) -> tuple[GatherTable, np.ndarray]:
    """(the table, its rows as the numpy dequantizer gives them)."""
    values = (np.random.default_rng(seed).standard_normal((rows, d)) * 3).astype(np.float32)
    if qtype == Q.F32:
        return GatherTable(values, qtype, rows, d), values
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType(int(qtype))).reshape(-1)
    return GatherTable(raw, qtype, rows, d), FORMATS[qtype].dequantize(raw.reshape(rows, -1), rows, d)


@pytest.mark.parametrize("isa", ISAS, ids=lambda s: s.name)
@pytest.mark.parametrize("qtype,d", [(Q.F32, 40), (Q.F32, 7), (Q.Q8_0, 384), (Q.Q8_0, 32)])
@pytest.mark.parametrize("n", [1, 2, 33, 600])
def test_rows_equal_the_numpy_lookup(isa, qtype, d, n):
    tab, rows = table(qtype, 97, d, seed=n)
    idx = np.random.default_rng(n).integers(0, 97, n)
    for scale in (1.0, 27.712812921102035):
        got = GATHER.on(isa)(tab, idx, scale, threads=2)
        want = rows[idx] * np.float32(scale)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(gather_reference(tab, idx, scale), want)


def test_indices_and_tables_are_checked():
    tab, _ = table(Q.Q8_0, 10, 64)
    for bad in ([10], [-1], [0, 3, 11]):
        with pytest.raises(KernelInputError, match="outside the table's 10 rows"):
            GATHER(tab, np.array(bad))
    with pytest.raises(KernelInputError, match="out must be"):
        GATHER(tab, np.array([1, 2]), out=np.zeros((2, 63), np.float32))
    with pytest.raises(KernelInputError, match="rows of 34 bytes|C-contiguous 9 rows"):
        GatherTable(tab.data, Q.Q8_0, 9, 64)
    with pytest.raises(KernelInputError, match="whole Q8_0 rows"):
        GatherTable(np.zeros(340, np.uint8), Q.Q8_0, 10, 48)
    with pytest.raises(KernelInputError, match="no row body"):
        GatherTable(np.zeros(20, np.uint8), Q.F16, 10, 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_recorded_step_takes_each_replays_indices(threads):
    native = GATHER.native(None)
    if native is None:
        pytest.skip("no JIT here")
    tab, rows = table(Q.Q8_0, 50, 96)
    out = np.zeros((20, 96), np.float32)
    program = Program.record(lambda: record_per_run(native, tab, lambda arg: arg["ids"], 2.0, threads, out))
    assert program.steps == 1 and program.ops == 1
    rng = np.random.default_rng(threads)
    for _ in range(3):
        idx = rng.integers(0, 50, 20)
        out.fill(np.nan)
        program.run(threads, {"ids": idx})
        np.testing.assert_array_equal(out, rows[idx] * np.float32(2.0))
    out.fill(7)
    for bad, match in [(np.full(20, 50), "outside"), (np.zeros(19, np.int64), "19 row numbers")]:
        with pytest.raises(KernelInputError, match=match):
            program.run(threads, {"ids": bad})
    assert (out == 7).all()
