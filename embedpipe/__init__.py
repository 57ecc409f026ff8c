"""embedpipe: CPU embedding pipeline built on GGUF models and llvmlite-JIT kernels."""

__version__ = "0.1.0"

__all__ = ["AsyncEmbedder", "Embedder", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import embedpipe` stays cheap for the CLI and for subpackages.
    if name == "Embedder":
        from embedpipe.runtime.embedder import Embedder

        return Embedder
    if name == "AsyncEmbedder":
        from embedpipe.runtime.async_embedder import AsyncEmbedder

        return AsyncEmbedder
    raise AttributeError(name)
