"""Property-based fuzzing (hypothesis) of the pure-Python checks that guard native code.

These run in-process because nothing here reaches a kernel: the properties say that the
parsers only ever raise their own clean error, and that whenever the index validator accepts
a graph or tree, a bounds-checked simulation of the search kernel's memory accesses over it
stays in bounds and terminates (so the validator is what makes the kernels safe).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedpipe.errors import EmbedpipeError
from embedpipe.indexes.annoy import AnnoyIndex, build_nodes
from embedpipe.indexes.base import IdTable, IndexMeta
from embedpipe.indexes.format import IndexFileError
from embedpipe.indexes.registry import build_index
from embedpipe.indexes.validate import annoy_roots, check_index
from embedpipe.runtime.gguf_parse import GGUFFormatError, parse_gguf
from embedpipe.runtime.gguf_schema import metadata_problems

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXTREMES = [-(2**31), -2, -1, 0, 1, 2, 5, 6, 7, 19, 20, 21, 40, 2**31 - 1]


# ----------------------------------------------------------------------------- GGUF


def _gguf_prefix(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@SETTINGS
@given(
    body=st.binary(max_size=400), n_tensors=st.sampled_from([0, 1, 3, 2**20]), n_kv=st.sampled_from([0, 1, 2, 2**20])
)
def test_gguf_parser_raises_only_its_own_error(tmp_path, body, n_tensors, n_kv):
    path = tmp_path / "x.gguf"
    path.write_bytes(_gguf_prefix(n_tensors, n_kv) + body)
    with open(path, "rb") as fh:
        try:
            parse_gguf(fh)
        except GGUFFormatError:
            pass


@SETTINGS
@given(key_len=st.integers(0, 2**64 - 1), vtype=st.integers(0, 13), tail=st.binary(max_size=64))
def test_gguf_lengths_and_counts_never_allocate_past_the_file(tmp_path, key_len, vtype, tail):
    path = tmp_path / "x.gguf"
    path.write_bytes(
        _gguf_prefix(0, 1)
        + struct.pack("<Q", 3)
        + b"abc"
        + struct.pack("<I", vtype)
        + struct.pack("<Q", key_len)
        + tail
    )
    with open(path, "rb") as fh:
        try:
            parse_gguf(fh)
        except GGUFFormatError:
            pass


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
)


@SETTINGS
@given(
    values=st.dictionaries(
        st.sampled_from(
            [
                "general.architecture",
                "general.alignment",
                "gemma-embedding.block_count",
                "gemma-embedding.rope.freq_base",
                "gemma-embedding.attention.layer_norm_rms_epsilon",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.bos_token_id",
                "gemma-embedding.pooling_type",
            ]
        ),
        _values,
    )
)
def test_metadata_schema_reports_never_raises(values):
    values.setdefault("general.architecture", "gemma-embedding")
    for problem in metadata_problems(values):
        assert isinstance(problem, str) and problem.isprintable()


# ----------------------------------------------------------------------------- containers

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**66), 2**66), st.floats(), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    from tests.fuzz.mutate_index import add_slack

    path = tmp_path_factory.mktemp("c") / "c.idx"
    build_index(
        np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32), kind="hnsw", m=4, ef_construction=8
    ).save(path)
    add_slack(path)
    return path.read_bytes()


@SETTINGS
@given(
    field=st.sampled_from(
        [
            "type",
            "dim",
            "count",
            "quant",
            "id_kind",
            "columns",
            "params",
            "sections",
            "payload_offset",
            "payload_size",
            "source_dim",
        ]
    ),
    value=_json,
    sub=st.sampled_from([None, "m", "entry", "ef_search", "codes", "nbr0"]),
)
def test_any_header_value_is_a_clean_index_error(tmp_path, container, field, value, sub):
    """Whatever a header field holds (checksums recomputed), opening the file either works or
    raises one short printable IndexFileError."""
    from embedpipe.indexes.hnsw import HnswIndex
    from tests.fuzz.mutate_index import _parts, reseal

    _, header = _parts(container)
    if sub is not None and isinstance(header.get(field), dict) and sub in header[field]:
        header[field][sub] = value
    else:
        header[field] = value
    path = tmp_path / "h.idx"
    path.write_bytes(reseal(container, header))
    for verify in (True, False):
        try:
            HnswIndex.load(path, verify=verify)
        except EmbedpipeError as exc:
            assert len(str(exc)) <= 300 and str(exc).isprintable()


# ----------------------------------------------------------------------------- annoy trees


def _annoy_oracle(nodes: np.ndarray, n_items: int, roots: list[int], K: int) -> None:
    """Every access the traversal kernel makes without a check of its own, bounds-checked,
    traversing all trees fully (leaf item ids are checked where they are read: not here)."""
    n_nodes = len(nodes)
    heap = list(roots)
    assert all(0 <= r < n_nodes for r in roots)
    popped: set[int] = set()
    peak = len(heap)
    while heap:
        i = heap.pop()
        nd = int(nodes[i, 0])
        if nd == 1 and i < n_items:
            continue
        if nd <= K:
            assert nd >= 1, "empty leaf"
            continue
        assert i not in popped, "split node expanded twice"
        popped.add(i)
        for c in (int(nodes[i, 1]), int(nodes[i, 2])):
            assert 0 <= c < n_nodes, "child out of range"
            heap.append(c)
        peak = max(peak, len(heap))
    assert peak <= n_nodes + 8, "kernel heap would overflow"


@pytest.fixture(scope="module")
def forest():
    x = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return build_nodes(x, 3, seed=2)


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 6), st.sampled_from(EXTREMES + [-3, 30, 31, 29])),
        min_size=1,
        max_size=4,
    )
)
def test_accepted_annoy_trees_are_safe_to_traverse(forest, edits):
    nodes = forest.copy()
    for node, col, value in edits:
        nodes[node % len(nodes), col] = value
    try:
        roots, n_items = annoy_roots("t.ann", nodes)
        index = check_index("t.ann", AnnoyIndex(nodes, 4, IdTable.from_values(None, n_items), IndexMeta(), None))
    except IndexFileError:
        return
    _annoy_oracle(nodes, index.n_items, index.roots, index.K)
    q = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for native in (True, False):  # a search either answers or stops with a clean error
        index.use_jit = native
        try:
            index.search_rows(q, 3, search_k=10**6)
        except IndexFileError as exc:
            assert "item id" in str(exc) or "leaf names" in str(exc)


# ----------------------------------------------------------------------------- HNSW graphs


def _hnsw_oracle(ix) -> None:
    """Every (node, layer) state the kernel can reach from the entry point, bounds-checked
    (layer-0 ids are checked where they are followed: a bad one ends the walk there)."""
    n, rows = ix.count, len(ix.nbru)
    top = int(ix.level[ix.entry])
    todo, seen = [(ix.entry, top)], set()
    while todo:
        u, layer = todo.pop()
        if (u, layer) in seen:
            continue
        seen.add((u, layer))
        assert 0 <= u < n
        if layer == 0:
            for v in ix.nbr0[u]:
                if not 0 <= v < n:
                    break
                todo.append((int(v), 0))
            continue
        row = int(ix.upoff[u]) + layer - 1
        assert 0 <= row < rows, "upper-layer row out of range"
        for v in ix.nbru[row]:
            if v < 0:
                break
            assert v < n
            todo.append((int(v), layer))
        todo.append((u, layer - 1))


@pytest.fixture(scope="module")
def graph():
    x = np.random.default_rng(3).standard_normal((60, 16)).astype(np.float32)
    return build_index(x, kind="hnsw", m=3, ef_construction=10, seed=1)


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["level", "upoff", "nbr0", "nbru", "entry"]),
            st.integers(0, 10**6),
            st.sampled_from([-(2**40), -2, -1, 0, 1, 2, 3, 5, 59, 60, 61, 127, 2**31 - 1, 2**40]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_accepted_hnsw_graphs_are_safe_to_search(graph, edits):
    from embedpipe.indexes.hnsw import HnswIndex

    arrays = {k: getattr(graph, k).copy() for k in ("level", "upoff", "nbr0", "nbru")}
    entry = graph.entry
    for name, pos, value in edits:
        if name == "entry":
            entry = value
            continue
        a = arrays[name].reshape(-1)
        if len(a):
            info = np.iinfo(a.dtype)
            a[pos % len(a)] = min(max(value, info.min), info.max)
    ix = HnswIndex(
        graph.codes,
        graph.scale,
        graph.quant,
        arrays["nbr0"],
        arrays["level"],
        arrays["upoff"],
        arrays["nbru"],
        entry,
        graph.params,
        graph.ids,
        graph.meta,
        None,
        graph.offset,
    )
    try:
        check_index("g.idx", ix)
    except IndexFileError:
        return
    _hnsw_oracle(ix)
    q = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    for native in (True, False):  # a search either answers or stops with a clean error
        ix._kernel = None if native else False
        try:
            ix.search_rows(q, 5, ef_search=60)
        except IndexFileError as exc:
            assert "node" in str(exc)
