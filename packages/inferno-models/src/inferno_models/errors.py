"""Typed errors of inferno-models. Each names the file and the problem."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ModelError", "ModelFormatError", "ModelNotFoundError", "UnsupportedModelError"]


class ModelError(Exception):
    """Base class of every error inferno-models raises."""


class ModelFormatError(ModelError):
    """A model file is malformed, truncated, inconsistent or unreadable.

    The message always starts with the file, e.g.
    ``model.gguf: tensor blk.3.attn_q.weight is truncated (expected 1327104 bytes, ...)``.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedModelError(ModelFormatError):
    """A well-formed file holds an architecture or quantization this package cannot load."""


class ModelNotFoundError(ModelError, LookupError):
    """A model name or path does not resolve to a model."""
