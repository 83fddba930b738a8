"""The seam of inferno-inference: what the daemon calls on an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from inferno_inference.types import (
    EmbeddingOutput,
    EmbeddingRequest,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
)

__all__ = ["InferenceEngine"]


@runtime_checkable
class InferenceEngine(Protocol):
    """A running engine serving many requests at once.

    Every method is called from the asyncio loop of the daemon and never blocks on a forward
    pass: the engine steps on its own thread.
    """

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Submit ``request`` and stream its outputs until every choice has finished.

        Validation happens on submission: an invalid request (prompt too long, bad parameters,
        duplicate id) raises `InvalidRequestError` from the first ``__anext__``. Closing or
        cancelling the iterator aborts the request and frees its KV blocks. A failure while
        stepping ends the affected choices with ``finish_reason="error"``.
        """
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        """The embedding of ``request``'s tokens, computed in the running batch.

        Raises `InvalidRequestError` (`PromptTooLongError` for an input longer than the
        context) when the request cannot be served, `EngineStoppedError` after shutdown, and
        `EngineError` when a step fails it. Cancelling the call aborts the request.
        """
        ...

    def abort(self, request_id: str) -> None:
        """Stop ``request_id`` at the next step boundary; unknown ids are ignored. Thread-safe."""
        ...

    def stats(self) -> EngineStats:
        """A cheap snapshot of load and cache counters. Thread-safe."""
        ...

    async def shutdown(self) -> None:
        """Abort everything still running, stop the stepping thread and free the KV cache."""
        ...
