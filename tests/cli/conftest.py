"""The CLI tests run on the fixtures of the packages they drive."""

from __future__ import annotations

from tests.eval.conftest import beir_dir, emb_dir, eval_cache, tiny_emb  # noqa: F401 (fixtures)
from tests.pipeline.conftest import corpus  # noqa: F401 (fixture)
