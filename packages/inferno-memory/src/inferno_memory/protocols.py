"""The seam of inferno-memory: what an allocator is and what a statistics source is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from inferno_memory.allocation import Allocation
    from inferno_memory.stats import MemoryStats

__all__ = ["GpuAllocator", "MemoryResource", "StatisticsSource"]


@runtime_checkable
class MemoryResource(Protocol):
    """Hands out blocks of memory and takes them back.

    Resources compose: a pool or an adaptor takes an upstream resource in its constructor and
    is itself a resource. Every implementation in this package is thread-safe.
    """

    def allocate(self, nbytes: int) -> Allocation:
        """Called when a caller needs ``nbytes`` bytes (``nbytes >= 0``).

        Returns an `Allocation` of exactly ``nbytes`` bytes (its ``size``), aligned to at least
        256 bytes, that stays valid until it is passed to `deallocate` on this same resource.
        Raises `OutOfMemoryError` (whose message carries the request and the resource's
        statistics) when the request cannot be met, and `InvalidSizeError` for a negative size.
        """
        ...

    def deallocate(self, allocation: Allocation) -> None:
        """Called when the caller is done with ``allocation``; returns nothing.

        The block may be reused at once, so no view of it may be used afterwards. Raises
        `DoubleFreeError` when the allocation was already freed and `ForeignAllocationError`
        when this resource (or its upstream) did not make it.
        """
        ...


GpuAllocator = MemoryResource
"""The allocator protocol under the name used by the original plan; same as `MemoryResource`."""


@runtime_checkable
class StatisticsSource(Protocol):
    """Something that can report its memory statistics (a pool, a `StatisticsAdaptor`)."""

    def stats(self) -> MemoryStats:
        """Called whenever a caller wants a snapshot; cheap, thread-safe, never blocks long.

        Returns a frozen `MemoryStats` taken atomically with respect to allocations.
        """
        ...
