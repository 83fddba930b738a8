"""Typed errors of the engine."""

from __future__ import annotations

__all__ = ["EngineError", "EngineStoppedError", "InvalidRequestError", "PromptTooLongError"]


class EngineError(Exception):
    """Base class of the engine's errors."""


class InvalidRequestError(EngineError, ValueError):
    """A request cannot be served as given; ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus at least one new token) does not fit in the model's context."""


class EngineStoppedError(EngineError):
    """The engine is shut down and accepts no more requests."""
