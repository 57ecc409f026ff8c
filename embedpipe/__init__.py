"""embedpipe: CPU embedding pipeline built on GGUF models and llvmlite-JIT kernels."""

__version__ = "0.1.0"

__all__ = ["AsyncEmbedder", "Embedder", "Index", "__version__", "search"]

# name -> module that defines it; imported on first use so that `import embedpipe` (and the CLI's
# --help) stays cheap
_LAZY = {
    "Embedder": "embedpipe.runtime.embedder",
    "AsyncEmbedder": "embedpipe.runtime.async_embedder",
    "Index": "embedpipe.indexes.searcher",
    "search": "embedpipe.indexes.searcher",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
