"""--engine ray on a local Ray instance gives the local engine's rows and vectors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.pipeline.test_ingest_basic import vectors

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_engine_equals_local(run, corpus, tiny_gguf, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    common = dict(model=str(tiny_gguf), backend="numpy", part_rows=25, max_tokens=48, keep=["doc"], cache=False)
    local, a = run(corpus, **common)
    try:
        remote, b = run(corpus, engine="ray", ray_actors=2, threads=1, **common)
    finally:
        ray.shutdown()
    assert remote.parts == local.parts == 5
    assert b.drop(["embedding"]).to_pylist() == a.drop(["embedding"]).to_pylist()
    # same parts, same windows, same batches -> the very same floats
    assert np.array_equal(vectors(b), vectors(a))
    assert remote.output_rows == local.output_rows and remote.skipped_rows == local.skipped_rows
