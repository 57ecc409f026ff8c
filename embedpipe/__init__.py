"""embedpipe: CPU embedding pipeline built on GGUF models and llvmlite-JIT kernels."""

from embedpipe.lazy_exports import lazy_exports

__version__ = "0.1.0"

__all__ = ["AsyncEmbedder", "Embedder", "Index", "__version__", "search"]

# name -> submodule that defines it; imported on first use so that `import embedpipe` (and the
# CLI's --help) stays cheap
_EXPORTS = {
    "Embedder": "runtime.embedder",
    "AsyncEmbedder": "runtime.async_embedder",
    "Index": "indexes.searcher",
    "search": "indexes.searcher",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
