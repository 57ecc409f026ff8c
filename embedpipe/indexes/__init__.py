"""Vector indexes: exact brute force (fp32/int16/int8), Annoy-compatible forests, HNSW.

Every type shares the API of :class:`~embedpipe.indexes.base.VectorIndex`
(`search`, `search_one`, `save`) and is built through :class:`Builder` / :func:`build_index`
and opened with :func:`load_index`.
"""

from embedpipe.indexes.base import IdTable, IndexMeta, VectorIndex
from embedpipe.indexes.format import DimensionMismatchError, IndexFileError
from embedpipe.indexes.registry import INDEX_TYPES, Builder, build_index, index_kind, load_index

__all__ = [
    "INDEX_TYPES",
    "Builder",
    "DimensionMismatchError",
    "IdTable",
    "IndexFileError",
    "IndexMeta",
    "VectorIndex",
    "build_index",
    "index_kind",
    "load_index",
]
