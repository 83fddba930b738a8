"""`MemoryStats`, the frozen snapshot every statistics source returns, and its counter."""

from __future__ import annotations

from dataclasses import dataclass

from inferno_memory.sizes import format_size

__all__ = ["MemoryStats", "StatsCounter"]


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """A snapshot of a resource's statistics.

    Bytes are the sizes callers asked for (``Allocation.size``), so they equal the sum over
    live allocations. ``limit_bytes`` is the budget or limit when the source knows one;
    ``reserved_bytes`` is what a pool holds from its upstream (used or not) when known.
    """

    current_bytes: int = 0
    peak_bytes: int = 0
    total_bytes: int = 0
    current_count: int = 0
    peak_count: int = 0
    total_count: int = 0
    limit_bytes: int | None = None
    reserved_bytes: int | None = None

    @property
    def utilization(self) -> float | None:
        """``current_bytes / limit_bytes``, or None without a (positive) limit."""
        if not self.limit_bytes:
            return None
        return self.current_bytes / self.limit_bytes

    def describe(self) -> str:
        """A one-line human summary, used in error messages and logs."""
        parts = [
            f"current {format_size(self.current_bytes)} in {self.current_count} allocations",
            f"peak {format_size(self.peak_bytes)}",
            f"total {format_size(self.total_bytes)} in {self.total_count} allocations",
        ]
        if self.reserved_bytes is not None:
            parts.append(f"reserved {format_size(self.reserved_bytes)}")
        if self.limit_bytes is not None:
            parts.append(f"limit {format_size(self.limit_bytes)}")
        return ", ".join(parts)


@dataclass(slots=True)
class StatsCounter:
    """Mutable running counters behind a `MemoryStats`; callers hold their own lock."""

    current_bytes: int = 0
    peak_bytes: int = 0
    total_bytes: int = 0
    current_count: int = 0
    peak_count: int = 0
    total_count: int = 0

    def on_allocate(self, nbytes: int) -> None:
        """Count one allocation of ``nbytes``."""
        self.current_bytes += nbytes
        self.total_bytes += nbytes
        self.current_count += 1
        self.total_count += 1
        # Peaks are tracked independently: the byte peak and the count peak may differ in time.
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self.peak_count = max(self.peak_count, self.current_count)

    def on_deallocate(self, nbytes: int) -> None:
        """Count one deallocation of ``nbytes``."""
        self.current_bytes -= nbytes
        self.current_count -= 1

    def reset_peak(self) -> None:
        """Make the peaks equal the current values."""
        self.peak_bytes = self.current_bytes
        self.peak_count = self.current_count

    def snapshot(
        self, *, limit_bytes: int | None = None, reserved_bytes: int | None = None
    ) -> MemoryStats:
        """Freeze the counters into a `MemoryStats`."""
        return MemoryStats(
            current_bytes=self.current_bytes,
            peak_bytes=self.peak_bytes,
            total_bytes=self.total_bytes,
            current_count=self.current_count,
            peak_count=self.peak_count,
            total_count=self.total_count,
            limit_bytes=limit_bytes,
            reserved_bytes=reserved_bytes,
        )
