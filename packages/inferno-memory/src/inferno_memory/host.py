"""`HostMemoryResource`: plain host memory from numpy, the CPU path of tests and deployments."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from inferno_memory._lock import ResourceLock
from inferno_memory.allocation import CPU, Allocation, new_owner_token, next_serial
from inferno_memory.errors import (
    DoubleFreeError,
    ForeignAllocationError,
    MemoryConfigError,
    OutOfMemoryError,
)
from inferno_memory.sizes import ALIGNMENT, format_size, parse_size

__all__ = ["HostMemoryResource", "check_request"]


def check_request(nbytes: int) -> int:
    """Validate an ``allocate`` argument: a non-negative int of bytes."""
    return parse_size(nbytes, field="nbytes")


class HostMemoryResource:
    """Pageable host memory, each block a numpy buffer kept alive until it is deallocated.

    Blocks are aligned to ``alignment`` bytes (256 by default, like CUDA memory) so code that
    relies on the alignment behaves the same on the CPU. Thread-safe.
    """

    def __init__(self, *, alignment: int = ALIGNMENT) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise MemoryConfigError(
                f"must be a positive power of two, got {alignment}", field="alignment"
            )
        self._alignment = alignment
        self._token = new_owner_token()
        self._lock = ResourceLock()
        # ptr -> (the buffer that owns the bytes, the allocation handed out)
        self._live: dict[int, tuple[npt.NDArray[np.uint8], Allocation]] = {}

    def allocate(self, nbytes: int) -> Allocation:
        """Return a fresh, ``alignment``-aligned block of ``nbytes`` bytes (uninitialised)."""
        nbytes = check_request(nbytes)
        try:
            # Over-allocate so an aligned start exists inside; one byte at least so a zero-size
            # request still gets a distinct address.
            buffer = np.empty(max(nbytes, 1) + self._alignment - 1, dtype=np.uint8)
        except MemoryError as exc:
            raise OutOfMemoryError(
                f"host memory: cannot allocate {format_size(nbytes)}",
                requested=nbytes,
            ) from exc
        base = int(buffer.ctypes.data)
        ptr = (base + self._alignment - 1) & ~(self._alignment - 1)
        allocation = Allocation(ptr, nbytes, CPU, self._token, next_serial())
        with self._lock:
            self._live[ptr] = (buffer, allocation)
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Drop the buffer behind ``allocation``; typed errors for double and foreign frees."""
        if allocation.owner != self._token:
            raise ForeignAllocationError(f"{allocation!r} was not made by this HostMemoryResource")
        if self._lock.defer_if_busy(self, allocation):
            return  # a finalizer during a collection: freed when the lock is released
        with self._lock:
            entry = self._live.get(allocation.ptr)
            if entry is None or entry[1] != allocation:
                raise DoubleFreeError(f"{allocation!r} was already freed")
            del self._live[allocation.ptr]

    def owns(self, allocation: Allocation) -> bool:
        """True when ``allocation`` is live and was made by this resource."""
        with self._lock:
            entry = self._live.get(allocation.ptr)
        return entry is not None and entry[1] == allocation

    @property
    def outstanding(self) -> int:
        """How many allocations are live."""
        with self._lock:
            return len(self._live)

    def __repr__(self) -> str:
        return f"HostMemoryResource(alignment={self._alignment}, outstanding={self.outstanding})"
