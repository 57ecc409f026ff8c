"""Our Annoy forest and Spotify annoy read each other's files."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.indexes import IndexFileError, build_index, load_index
from embedpipe.indexes.annoy import AnnoyIndex, find_roots

from .helpers import clustered, exact_topk, recall

annoy = pytest.importorskip("annoy", reason="the `annoy` test oracle could not be installed/built")

D = 32


@pytest.fixture(scope="module")
def data():
    x = clustered(1500, D, seed=11)
    return x[:1400], x[1400:]


def test_spotify_annoy_reads_our_file(tmp_path, data):
    x, q = data
    ours = build_index(x, ids=[f"d{i}" for i in range(len(x))], kind="annoy", n_trees=8)
    path = tmp_path / "ours.ann"
    ours.save(path)
    assert (tmp_path / "ours.ann.ids").exists()
    theirs = annoy.AnnoyIndex(D, "angular")
    theirs.load(str(path))
    assert theirs.get_n_items() == len(x) and theirs.get_n_trees() == 8
    np.testing.assert_allclose(theirs.get_item_vector(17), x[17], rtol=1e-6)
    found = np.array([theirs.get_nns_by_vector(v, 10, search_k=4000) for v in q])
    assert recall(found, exact_topk(x, q, 10)) >= 0.9
    # their distances are angular distances sqrt(2 - 2 cos) of our scores
    ids, dist = theirs.get_nns_by_vector(q[0], 5, include_distances=True)
    cos = x[ids] @ (q[0] / np.linalg.norm(q[0]))
    np.testing.assert_allclose(np.array(dist), np.sqrt(np.maximum(2 - 2 * cos, 0)), atol=1e-4)


def test_we_read_spotify_annoy_files(tmp_path, data):
    x, q = data
    ref = annoy.AnnoyIndex(D, "angular")
    ref.set_seed(3)
    for i, v in enumerate(x):
        ref.add_item(i, v * (1 + i % 3))  # annoy keeps raw, un-normalized vectors
    ref.build(8)
    path = tmp_path / "theirs.ann"
    ref.save(str(path))
    ix = AnnoyIndex.load_spotify(path, D, search_k=4000)
    assert ix.n_items == len(x) and len(ix.roots) == 8
    scores, ids = ix.search(q, 10)
    assert recall(ids, exact_topk(x, q, 10)) >= 0.9
    qn = q[0] / np.linalg.norm(q[0])
    np.testing.assert_allclose(scores[0], x[ids[0]] @ qn, atol=1e-5)  # cosine, not raw dot
    # same candidates with search_k = everything → same top-10 as Spotify's exhaustive mode
    exhaustive = ix.search_rows(q[:5], 10, search_k=10**9)[1]
    theirs_all = np.array([ref.get_nns_by_vector(v, 10, search_k=10**9) for v in q[:5]])
    assert recall(exhaustive, theirs_all) == 1.0


def test_roots_found_like_annoy_does(data):
    x, _ = data
    ix = build_index(x, kind="annoy", n_trees=5)
    roots, n_items = find_roots(ix.nodes)
    assert n_items == len(x) and len(roots) == 5
    assert (ix.nodes[roots, 0] == len(x)).all()


def test_wrong_dim_corrupt_and_mismatched_files(tmp_path, data):
    x, _ = data
    path = tmp_path / "a.ann"
    build_index(x, kind="annoy", n_trees=3).save(path)
    with pytest.raises(IndexFileError, match="not a multiple"):
        AnnoyIndex.load_spotify(path, D + 1)
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="checksum"):
        load_index(path)
    path.write_bytes(bytes(raw[: -4 * (D + 3)]))
    with pytest.raises(IndexFileError, match="sidecar says|truncated"):
        load_index(path)
    (tmp_path / "a.ann.ids").unlink()
    with pytest.raises(IndexFileError, match="no annoy sidecar"):
        load_index(path)


def test_the_sidecar_given_as_the_index_names_the_tree_file(tmp_path, data):
    path = tmp_path / "a.ann"
    build_index(data[0][:50], kind="annoy", n_trees=2).save(path)
    with pytest.raises(IndexFileError, match=r"a\.ann\.ids: is the id sidecar of an annoy index; pass .*a\.ann\)"):
        load_index(tmp_path / "a.ann.ids")
