"""The ingest output dataset read back: metadata, part selection, the errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.pipeline.dataset import STRUCTURAL_COLUMNS, EmbeddingsDirError, read_embeddings


def test_reads_what_ingest_wrote_and_chosen_parts(run, corpus, tiny_emb, tmp_path):
    run(corpus, out=tmp_path / "o", part_rows=50, keep=["year"])
    whole = read_embeddings(tmp_path / "o")
    assert whole.meta.model_sha256 == tiny_emb.model_sha256 and whole.meta.dim == tiny_emb.dims[0]
    assert whole.meta.task == "document" and whole.meta.dtype == "float32"
    assert list(whole.part_rows.values()) == [50, 50, 20] and len(whole.vectors) == 120
    assert set(whole.columns) == {"year"} and not set(whole.columns) & set(STRUCTURAL_COLUMNS)
    np.testing.assert_allclose(np.linalg.norm(whole.vectors, axis=1), 1.0, atol=1e-5)
    last = sorted(whole.part_rows)[-1:]
    some = read_embeddings(tmp_path / "o", parts=last)
    assert list(some.part_rows) == last
    np.testing.assert_array_equal(some.vectors, whole.vectors[100:])


def test_errors_name_the_directory_or_part(tmp_path):
    with pytest.raises(EmbeddingsDirError, match="not a directory"):
        read_embeddings(tmp_path / "absent")
    with pytest.raises(EmbeddingsDirError, match="no part-"):
        read_embeddings(tmp_path)
    (tmp_path / "part-000000.parquet").write_bytes(b"junk")
    with pytest.raises(EmbeddingsDirError, match="part-000000.parquet: unreadable"):
        read_embeddings(tmp_path)
