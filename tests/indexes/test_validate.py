"""The index values the issue found crashing the search kernels are refused at load, in our
files with recomputed checksums, with verify=False and in Spotify `.ann` files."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from embedpipe.indexes.annoy import HEADER_INTS, AnnoyIndex
from embedpipe.indexes.format import IndexFileError, read_container, write_container
from embedpipe.indexes.registry import build_index, load_index
from tests.indexes.helpers import clustered

DIM = 32


@pytest.fixture(scope="module")
def vectors():
    return clustered(300, DIM, seed=4)


def _rewrite(path, edit):
    """Edit the sections of a container and write it back with fresh checksums."""
    header, sec = read_container(path)
    sec = {k: np.array(v) for k, v in sec.items()}
    edit(header, sec)
    header = {k: v for k, v in header.items() if not k.startswith("payload")}
    write_container(path, header, sec)


@pytest.fixture
def hnsw_file(vectors, tmp_path):
    path = tmp_path / "h.idx"
    build_index(vectors, kind="hnsw", m=6, ef_construction=30).save(path)
    return path


def _entry(header):
    return header["params"]["entry"]


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda h, s: s["upoff"].__setitem__(_entry(h), 2**40), "upper-layer rows"),
        (lambda h, s: s["level"].__setitem__(_entry(h), 127), "levels range"),
        (lambda h, s: h["params"].__setitem__("entry", -1), "entry"),
        (lambda h, s: h["params"].__setitem__("entry", 300), "entry point 300"),
        (lambda h, s: s["scale"].__setitem__(3, np.nan), "NaN"),
        (lambda h, s: s["offset"].__setitem__(0, np.inf), "NaN or infinite"),
        (lambda h, s: s.__setitem__("level", s["level"].astype(np.int16)), "level"),
    ],
)
def test_hnsw_values_the_kernel_follows(vectors, tmp_path, verify, edit, match):
    path = tmp_path / "h.idx"
    build_index(vectors, kind="hnsw", quant="int8", m=6, ef_construction=30).save(path)
    _rewrite(path, edit)
    with pytest.raises(IndexFileError, match=match):
        load_index(path, verify=verify)


LAYER0_EDITS = [((slice(None), 0), 300), ((slice(None), 1), -7), ((slice(None), 2), 2**31 - 1)]


@pytest.mark.parametrize("where,value", LAYER0_EDITS)
@pytest.mark.parametrize("native", [True, False])
def test_hnsw_layer0_ids_are_checked_where_they_are_followed(vectors, hnsw_file, where, value, native):
    """Layer-0 ids are not scanned at load: the kernel and the numpy reference refuse a bad one
    when they meet it, and an update (whose insertion kernels do not check) refuses it first."""
    _rewrite(hnsw_file, lambda h, s: s["nbr0"].__setitem__(where, value))
    ix = load_index(hnsw_file)
    if not native:
        ix._kernel = False
    with pytest.raises(IndexFileError, match="node"):
        ix.search_rows(vectors[:3], 5, ef_search=40)
    with pytest.raises(IndexFileError, match=f"holds node id {value}"):
        ix.add(vectors[:2])


def test_hnsw_upper_neighbour_not_on_the_layer(hnsw_file):
    def edit(h, s):
        low = int(np.flatnonzero(s["level"] == 0)[0])
        s["nbru"][int(s["upoff"][_entry(h)]), 0] = low  # the entry's layer-1 list

    _rewrite(hnsw_file, edit)
    with pytest.raises(IndexFileError, match="not on that layer"):
        load_index(hnsw_file)


def test_section_offset_size_and_shape_must_agree(hnsw_file):
    blob = bytearray(hnsw_file.read_bytes())
    header_len = int.from_bytes(blob[12:16], "little")
    text = bytes(blob[24 : 24 + header_len]).decode()
    moved = text.replace('"shape": [300, 12]', '"shape": [301, 12]', 1)
    assert moved != text
    blob[24 : 24 + header_len] = moved.encode()
    blob[16:20] = zlib.crc32(moved.encode()).to_bytes(4, "little")
    hnsw_file.write_bytes(bytes(blob))
    with pytest.raises(IndexFileError, match="holds .* bytes, but shape"):
        load_index(hnsw_file, verify=False)


@pytest.fixture
def annoy_nodes(vectors, tmp_path):
    path = tmp_path / "a.ann"
    build_index(vectors, kind="annoy", n_trees=3).save(path)
    return path, np.fromfile(path, np.int32).reshape(-1, HEADER_INTS + DIM)


def _first(nodes, n_items, leaf: bool) -> int:
    """A split node below the last root copy, or the first leaf bucket on its left spine
    (reachable nodes: the original root rows are never visited)."""
    K = DIM + 2
    i = int(nodes[-1, 1])
    while nodes[i, 0] > K and leaf:
        i = int(nodes[i, 1])
    assert (nodes[i, 0] <= K) == leaf and i >= n_items
    return i


@pytest.mark.parametrize(
    "target,col,value,match",
    [
        ("split", 1, 2**31 - 1, "split node"),
        ("split", 2, -(2**31), "split node"),
        ("root", 1, 2**31 - 1, "split node"),
        ("split", 0, 0, "n_descendants"),
    ],
)
def test_annoy_tree_values_spotify_and_verify_false(annoy_nodes, tmp_path, target, col, value, match):
    path, nodes = annoy_nodes
    nodes = nodes.copy()
    i = len(nodes) - 1 if target == "root" else _first(nodes, 300, target == "leaf")
    nodes[i, col] = value
    bad = tmp_path / "bad.ann"
    nodes.tofile(bad)
    with pytest.raises(IndexFileError, match=match):
        AnnoyIndex.load_spotify(bad, DIM)
    nodes.tofile(path)  # beside its sidecar: the checksum is skipped with verify=False
    with pytest.raises(IndexFileError, match=match):
        load_index(path, verify=False)


@pytest.mark.parametrize("value", [-1, 300, 2**31 - 1])
@pytest.mark.parametrize("native", [True, False])
def test_annoy_leaf_items_are_checked_where_they_are_read(annoy_nodes, vectors, tmp_path, value, native):
    path, nodes = annoy_nodes
    nodes = nodes.copy()
    K = DIM + 2
    tree = np.arange(len(nodes)) >= 300
    nodes[tree & (nodes[:, 0] > 1) & (nodes[:, 0] <= K), 1] = value  # every leaf bucket's first item
    bad = tmp_path / "bad.ann"
    nodes.tofile(bad)
    ix = AnnoyIndex.load_spotify(bad, DIM)
    ix.use_jit = native
    with pytest.raises(IndexFileError, match="item id"):
        ix.search_rows(vectors[:3], 5, search_k=10**6)


def test_annoy_cycle_is_refused(annoy_nodes, tmp_path):
    _, nodes = annoy_nodes
    nodes = nodes.copy()
    i = _first(nodes, 300, leaf=False)
    nodes[i, 1] = i  # a split node that is its own child
    bad = tmp_path / "cycle.ann"
    nodes.tofile(bad)
    with pytest.raises(IndexFileError, match="reached twice"):
        AnnoyIndex.load_spotify(bad, DIM)


def test_valid_spotify_file_still_loads_and_searches(annoy_nodes, vectors):
    path, _ = annoy_nodes
    ix = AnnoyIndex.load_spotify(path, DIM)
    _, ids = ix.search(vectors[:3], 1)
    assert list(ids[:, 0]) == [0, 1, 2]


def test_header_field_of_the_wrong_type(vectors, tmp_path):
    path = tmp_path / "b.idx"
    build_index(vectors, kind="brute", quant="int8").save(path)
    _rewrite(path, lambda h, s: h.__setitem__("dim", "32"))
    with pytest.raises(IndexFileError, match="'dim' is str, expected int"):
        load_index(path)


def test_nan_vectors_never_surface_as_results(vectors, tmp_path):
    """Vectors are not scanned at load (a full pass); a NaN row must still never be returned
    with a NaN score, and a NaN score that does reach the results is an error."""
    path = tmp_path / "b.idx"
    build_index(vectors, kind="brute").save(path)
    _rewrite(path, lambda h, s: s["codes"].__setitem__((slice(0, 10), slice(None)), np.nan))
    ix = load_index(path)
    scores, rows = ix.search_rows(vectors[:12], 20)
    assert np.isfinite(scores[rows >= 0]).all() and not np.isin(rows, np.arange(10)).any()
    from embedpipe.indexes.validate import check_results

    with pytest.raises(IndexFileError, match=f"{path}: a stored vector is NaN"):
        check_results(ix, np.array([[0.5, np.nan]], np.float32), np.array([[3, 4]]))
    check_results(ix, np.array([[0.5, -np.inf]], np.float32), np.array([[3, -1]]))  # padding is fine


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda h, s: h["params"].__setitem__("ef_construction", 0), r"'ef_construction' is 0, outside \[1, "),
        (lambda h, s: h["params"].__setitem__("m", 1), r"'m' is 1, outside \[2, "),
        (lambda h, s: h["params"].__setitem__("m", 64), "m=64 does not match its neighbour lists"),
    ],
)
def test_stored_build_parameters_an_update_is_sized_by(hnsw_file, edit, match):
    """An update sizes its native scratch by ef_construction (0 corrupted the heap) and its rows
    and levels by m: values it cannot use are refused at load."""
    _rewrite(hnsw_file, edit)
    with pytest.raises(IndexFileError, match=match):
        load_index(hnsw_file)


def test_the_graph_builder_refuses_what_would_size_its_buffers_to_nothing(vectors):
    from embedpipe.indexes.hnsw import HnswIndex

    index = build_index(vectors[:50], kind="hnsw", m=6, ef_construction=30)
    assert isinstance(index, HnswIndex)
    index.params["ef_construction"] = 0  # as a file would hold it, had it not been checked
    with pytest.raises(ValueError, match="ef_construction >= 1"):
        index.add(vectors[50:60])
    index.params["ef_construction"], index.m = 30, 1
    with pytest.raises(ValueError, match="m must be at least 2"):
        index.add(vectors[50:60])
