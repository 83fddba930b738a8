"""Adaptors: resources that wrap any upstream resource and add one concern each."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from inferno_memory._lock import ResourceLock
from inferno_memory.allocation import Allocation
from inferno_memory.errors import DoubleFreeError, LimitExceededError
from inferno_memory.host import check_request
from inferno_memory.observers import Observers
from inferno_memory.protocols import MemoryResource
from inferno_memory.sizes import Size, format_size, parse_size
from inferno_memory.stats import MemoryStats, StatsCounter

__all__ = ["LimitingAdaptor", "StatisticsAdaptor", "TrackedAllocation", "TrackingAdaptor"]


class LimitingAdaptor:
    """Refuses requests that would take the bytes live through it past ``limit``.

    Counts requested sizes (``Allocation.size``); raises `LimitExceededError` (an
    `OutOfMemoryError`) before touching the upstream. Thread-safe.
    """

    def __init__(self, upstream: MemoryResource, limit: Size) -> None:
        self._upstream = upstream
        self._limit = parse_size(limit, field="limit")
        self._lock = ResourceLock()
        self._allocated = 0

    def allocate(self, nbytes: int) -> Allocation:
        """Reserve ``nbytes`` against the limit, then allocate upstream."""
        nbytes = check_request(nbytes)
        with self._lock:
            if self._allocated + nbytes > self._limit:
                raise LimitExceededError(
                    f"allocating {format_size(nbytes)} would exceed the limit of "
                    f"{format_size(self._limit)}: {format_size(self._allocated)} already "
                    f"allocated",
                    requested=nbytes,
                    stats=MemoryStats(current_bytes=self._allocated, limit_bytes=self._limit),
                )
            self._allocated += nbytes
        try:
            return self._upstream.allocate(nbytes)
        except BaseException:
            with self._lock:
                self._allocated -= nbytes
            raise

    def deallocate(self, allocation: Allocation) -> None:
        """Free upstream (which checks ownership), then return the bytes to the budget."""
        if self._lock.defer_if_busy(self, allocation):
            return  # a finalizer during a collection: freed when the lock is released
        self._upstream.deallocate(allocation)
        with self._lock:
            self._allocated -= allocation.size

    @property
    def upstream(self) -> MemoryResource:
        """The wrapped resource."""
        return self._upstream

    @property
    def limit_bytes(self) -> int:
        """The limit in bytes."""
        return self._limit

    @property
    def allocated_bytes(self) -> int:
        """Bytes currently allocated through this adaptor."""
        with self._lock:
            return self._allocated


class StatisticsAdaptor:
    """Counts current, peak and total bytes and allocations passing through it.

    ``limit_bytes`` in its snapshots is ``limit`` when given, else the upstream's
    ``limit_bytes`` (a `LimitingAdaptor` or a pool's ``maximum_size``). `subscribe` runs a
    callback after each change, which is how a `MemoryTracker` follows it. Thread-safe.
    """

    def __init__(self, upstream: MemoryResource, *, limit: Size | None = None) -> None:
        self._upstream = upstream
        self._limit = None if limit is None else parse_size(limit, field="limit")
        self._lock = ResourceLock()
        self._counter = StatsCounter()
        self._observers = Observers()

    def allocate(self, nbytes: int) -> Allocation:
        """Allocate upstream and count it."""
        allocation = self._upstream.allocate(nbytes)
        with self._lock:
            self._counter.on_allocate(allocation.size)
        if self._observers:
            self._observers.notify()
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Free upstream and count it (nothing is counted when the upstream refuses)."""
        if self._lock.defer_if_busy(self, allocation):
            return  # a finalizer during a collection: freed when the lock is released
        self._upstream.deallocate(allocation)
        with self._lock:
            self._counter.on_deallocate(allocation.size)
        if self._observers:
            self._observers.notify()

    def stats(self) -> MemoryStats:
        """A snapshot of the counters."""
        limit = self.limit_bytes
        with self._lock:
            return self._counter.snapshot(limit_bytes=limit)

    def reset_peak(self) -> None:
        """Make peak bytes and peak count equal the current values."""
        with self._lock:
            self._counter.reset_peak()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after every allocate/deallocate; returns the unsubscribe function."""
        return self._observers.subscribe(callback)

    @property
    def upstream(self) -> MemoryResource:
        """The wrapped resource."""
        return self._upstream

    @property
    def limit_bytes(self) -> int | None:
        """The limit reported in snapshots, if any."""
        return (
            self._limit if self._limit is not None else getattr(self._upstream, "limit_bytes", None)
        )


@dataclass(frozen=True, slots=True)
class TrackedAllocation:
    """A live allocation seen by a `TrackingAdaptor`, with its tag and, optionally, stack."""

    allocation: Allocation
    tag: str | None
    stack: str | None


class TrackingAdaptor:
    """Remembers every live allocation (with an optional tag) to report leaks.

    ``capture_stacks=True`` records where each allocation was made (costly: for debugging).
    Thread-safe.
    """

    def __init__(self, upstream: MemoryResource, *, capture_stacks: bool = False) -> None:
        self._upstream = upstream
        self._capture_stacks = capture_stacks
        self._lock = ResourceLock()
        self._live: dict[int, TrackedAllocation] = {}

    def allocate(self, nbytes: int, *, tag: str | None = None) -> Allocation:
        """Allocate upstream and remember the allocation under ``tag``."""
        allocation = self._upstream.allocate(nbytes)
        stack = "".join(traceback.format_stack(limit=16)[:-1]) if self._capture_stacks else None
        with self._lock:
            self._live[allocation.ptr] = TrackedAllocation(allocation, tag, stack)
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Forget ``allocation`` and free it upstream."""
        if self._lock.defer_if_busy(self, allocation):
            return  # a finalizer during a collection: freed when the lock is released
        with self._lock:
            tracked = self._live.get(allocation.ptr)
            if tracked is not None and tracked.allocation != allocation:
                raise DoubleFreeError(
                    f"{allocation!r} is not live: another allocation "
                    f"({tracked.allocation!r}) now holds that address"
                )
        # The upstream decides foreign versus double free for allocations we never saw.
        self._upstream.deallocate(allocation)
        with self._lock:
            self._live.pop(allocation.ptr, None)

    def outstanding(self, tag: str | None = None) -> list[TrackedAllocation]:
        """Live allocations (only those tagged ``tag`` when given), in address order."""
        with self._lock:
            items = list(self._live.values())
        if tag is not None:
            items = [t for t in items if t.tag == tag]
        return sorted(items, key=lambda t: t.allocation.ptr)

    @property
    def outstanding_bytes(self) -> int:
        """Bytes held by live allocations."""
        with self._lock:
            return sum(t.allocation.size for t in self._live.values())

    def leak_report(self) -> str:
        """A human-readable list of live allocations grouped by tag; empty when none."""
        items = self.outstanding()
        if not items:
            return ""
        by_tag: dict[str, list[TrackedAllocation]] = {}
        for item in items:
            by_tag.setdefault(item.tag or "<untagged>", []).append(item)
        total = sum(t.allocation.size for t in items)
        lines = [f"{len(items)} allocations outstanding, {format_size(total)}:"]
        for tag, group in sorted(by_tag.items()):
            size = sum(t.allocation.size for t in group)
            lines.append(f"  {tag}: {len(group)} allocations, {format_size(size)}")
            for item in group:
                a = item.allocation
                lines.append(f"    {a.ptr:#x} {a.size} B on {a.device}")
                if item.stack:
                    lines.extend("      " + line for line in item.stack.rstrip().splitlines())
        return "\n".join(lines)

    @property
    def upstream(self) -> MemoryResource:
        """The wrapped resource."""
        return self._upstream
