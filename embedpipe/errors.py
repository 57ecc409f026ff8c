"""Exceptions that carry a message fit to show a user as-is."""


class EmbedpipeError(Exception):
    """Base class: the CLI prints these without a traceback and exits 1."""


class ModelFileError(EmbedpipeError):
    """A GGUF/safetensors file is missing, truncated, corrupt or unsupported."""


class InputTooLongError(EmbedpipeError):
    """A text has more tokens than the model's context and truncation was not requested."""
