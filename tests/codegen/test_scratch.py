"""Per-thread driver scratch (codegen/scratch.py): one value per thread, grown float buffers,
and the registry a step-program recording swaps."""

from __future__ import annotations

import threading

import numpy as np

from embedpipe.codegen import attention, encoder_attention, prepared, scratch
from embedpipe.codegen.program import _private_scratch


def test_each_thread_has_its_own_value_and_buffers_grow():
    s = scratch.ThreadScratch(dict)
    s.value["here"] = 1
    seen = []
    t = threading.Thread(target=lambda: seen.append(dict(s.value)))
    t.start()
    t.join()
    assert seen == [{}] and s.value == {"here": 1}
    buf = s.floats(10)
    assert buf.dtype == np.float32 and buf.size >= 10 and buf.ctypes.data % 64 == 0
    assert s.floats(5) is buf and s.floats(100).size >= 100


def test_the_drivers_scratch_is_registered_and_a_recording_gets_fresh_scratch():
    owned = {id(prepared._local), id(attention._scratch), id(encoder_attention._scratch)}
    assert owned <= {id(s) for s in scratch.REGISTRY}
    before = attention._scratch.floats(64)

    class _Rec:
        after_add: list = []

    with _private_scratch(_Rec()) as kept:
        inside = attention._scratch.floats(64)
        assert inside is not before
        _Rec.after_add[-1]()  # what a recorded fork does
        assert any(k is inside for k in kept)
    assert attention._scratch.floats(64) is before
