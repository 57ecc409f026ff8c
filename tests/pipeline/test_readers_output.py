"""Input formats give the same rows; output schema, metadata, dtypes, and other readers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import EmbedpipeError
from embedpipe.pipeline.readers import Corpus
from tests.pipeline.conftest import make_texts
from tests.pipeline.test_ingest_basic import vectors


def write_all_formats(tmp_path, table: pa.Table) -> dict[str, object]:
    d = tmp_path / "fmt"
    d.mkdir()
    pq.write_table(table, d / "c.parquet", row_group_size=7)
    feather.write_feather(table, d / "c.feather", chunksize=9)
    pacsv.write_csv(table, d / "c.csv")
    (d / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return {"parquet": d / "c.parquet", "feather": d / "c.feather", "csv": d / "c.csv", "jsonl": d / "c.jsonl"}


@pytest.mark.parametrize("start", [0, 5, 7, 30, 40])
def test_formats_agree_from_any_start(tmp_path, start):
    table = pa.table({"text": make_texts(40, seed=5), "n": list(range(40))})
    paths = write_all_formats(tmp_path, table)
    for name, path in paths.items():
        rows = []
        for first, _, batch in Corpus.open([str(path)], ["text", "n"]).batches(["text", "n"], start=start, rows=4):
            assert batch.column("n").to_pylist()[0] == first
            rows.extend(batch.column("n").to_pylist())
        assert rows == list(range(start, 40)), name


def test_directory_and_glob_number_rows_across_files(tmp_path, run):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": make_texts(5, seed=i)}), d / f"f{i}.parquet")
    (d / "_ignored.parquet").write_bytes(b"not parquet")
    _, by_dir = run(d, cache=False)
    _, by_glob = run(str(d / "f*.parquet"), cache=False)
    assert by_dir.column("id").to_pylist() == list(range(15)) == by_glob.column("id").to_pylist()
    with pytest.raises(EmbedpipeError, match="matches no files"):
        run(str(d / "*.nothing"))


def test_an_output_inside_the_input_directory_is_not_read_back_as_input(tmp_path, run):
    d = tmp_path / "nest"
    d.mkdir()
    pq.write_table(pa.table({"text": make_texts(6)}), d / "f.parquet")
    first, table = run(d, out=d / "emb", cache=False)
    again, _ = run(d, out=d / "emb", cache=False)  # the parts in nest/emb are not input
    assert table.num_rows == 6 and again.rows_in == first.rows_in == 6
    with pytest.raises(EmbedpipeError, match=r"is an input directory"):
        run(d, out=d, cache=False, overwrite=True)
    assert (d / "f.parquet").is_file()


def test_schema_metadata_and_types(run, corpus, tiny_emb):
    summary, table = run(corpus, cache=False, keep=["year"])
    out = corpus.parent / "out0"
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["embedpipe.model_sha256"] == tiny_emb.model_sha256
    assert meta["embedpipe.task"] == "document" and meta["embedpipe.dim"] == str(tiny_emb.dims[0])
    assert meta["embedpipe.normalized"] == "true" and meta["embedpipe.dtype"] == "float32"
    assert meta["embedpipe.version"] and meta["embedpipe.model_path"].endswith(".gguf")
    assert schema.field("embedding").type == pa.list_(pa.field("item", pa.float32(), nullable=False), tiny_emb.dims[0])
    assert schema.names == ["id", "chunk", "token_start", "token_end", "year", "embedding"]
    assert not list(out.glob(".*tmp*"))


def test_float16_and_int8(run, corpus):
    _, f32 = run(corpus, cache=False)
    _, f16 = run(corpus, dtype="float16", cache=False)
    _, i8 = run(corpus, dtype="int8", cache=False)
    ref = vectors(f32)
    np.testing.assert_allclose(vectors(f16).astype(np.float32), ref, atol=2e-3)
    deq = vectors(i8).astype(np.float32) * i8.column("scale").to_numpy()[:, None]
    np.testing.assert_allclose(deq, ref, atol=np.abs(ref).max() / 127)
    assert i8.schema.field("embedding").type.value_type == pa.int8()


def test_readable_by_pandas_polars_duckdb(run, corpus):
    run(corpus, cache=False, keep=["doc"])
    out = corpus.parent / "out0"
    pattern = str(out / "part-*.parquet")
    pd = pytest.importorskip("pandas")
    frame = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
    assert len(frame) == 120 and len(frame["embedding"].iloc[0]) == 64
    pl = pytest.importorskip("polars")
    assert pl.read_parquet(pattern).height == 120
    duckdb = pytest.importorskip("duckdb")
    n, dim = duckdb.sql(f"SELECT count(*), max(len(embedding)) FROM read_parquet('{pattern}')").fetchall()[0]
    assert (n, dim) == (120, 64)


def test_float16_and_int8_readable_by_polars_duckdb(run, corpus):
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    for i, dtype in enumerate(("float16", "int8")):
        run(corpus, dtype=dtype, cache=False)
        pattern = str(corpus.parent / f"out{i}" / "part-*.parquet")
        assert pl.read_parquet(pattern).height == 120
        assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchall()[0][0] == 120
