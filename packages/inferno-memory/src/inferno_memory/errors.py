"""Typed errors of inferno-memory; each message names the problem and, where useful, the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferno_memory.stats import MemoryStats

__all__ = [
    "BackendUnavailableError",
    "DoubleFreeError",
    "ForeignAllocationError",
    "InfernoMemoryError",
    "InvalidSizeError",
    "LimitExceededError",
    "MemoryConfigError",
    "OutOfMemoryError",
    "ResourceBusyError",
]


class InfernoMemoryError(Exception):
    """Base class of every error raised by inferno-memory."""


class InvalidSizeError(InfernoMemoryError, ValueError):
    """A size is not a non-negative whole number of bytes (or a string such as ``"4MiB"``)."""


class MemoryConfigError(InfernoMemoryError, ValueError):
    """A configuration value is out of range; ``field`` names the offending parameter."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfMemoryError(InfernoMemoryError, MemoryError):
    """A request cannot be satisfied.

    ``requested`` is the request in bytes and ``stats`` the statistics of the resource that
    refused it (when it keeps any); both also appear in the message.
    """

    def __init__(self, message: str, *, requested: int, stats: MemoryStats | None = None) -> None:
        super().__init__(message)
        self.requested = requested
        self.stats = stats


class LimitExceededError(OutOfMemoryError):
    """A `LimitingAdaptor` refused a request that would take it past its limit."""


class DoubleFreeError(InfernoMemoryError):
    """An allocation was handed back to the resource that made it after it was already freed."""


class ForeignAllocationError(InfernoMemoryError):
    """An allocation was handed to a resource that did not make it."""


class ResourceBusyError(InfernoMemoryError, RuntimeError):
    """A finalizer run by a garbage collection asked a resource for memory (or its
    statistics) while the collection had interrupted that resource's own critical section
    on the same thread: waiting would hang the thread for good, so the call fails instead.
    Frees from finalizers never see this: they are queued."""


class BackendUnavailableError(InfernoMemoryError, ImportError):
    """An optional backend (CuPy, torch, the native pool core) or a CUDA device is needed but
    is not available."""
