"""`TorchCudaMemoryResource`: a `MemoryResource` over torch's CUDA caching allocator.

For deployments without CuPy: KV memory still flows through the `MemoryResource` seam (so a
`StatisticsAdaptor` around it sees every byte), while torch's allocator does the work.
"""

from __future__ import annotations

import threading

import torch
from inferno_memory import Allocation, Device, DeviceKind, DoubleFreeError, ForeignAllocationError
from inferno_memory.allocation import new_owner_token, next_serial

__all__ = ["TorchCudaMemoryResource"]


class TorchCudaMemoryResource:
    """CUDA memory of ``device`` from ``torch.cuda.caching_allocator_alloc``. Thread-safe."""

    def __init__(self, device: int = 0) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("TorchCudaMemoryResource needs a CUDA device; none is visible")
        self._device = Device(DeviceKind.CUDA, device)
        self._token = new_owner_token()
        self._lock = threading.Lock()
        self._live: dict[int, Allocation] = {}

    def allocate(self, nbytes: int) -> Allocation:
        """``nbytes`` of device memory (at least one byte is reserved for a zero-size block)."""
        ptr = int(torch.cuda.caching_allocator_alloc(max(nbytes, 1), self._device.index))
        allocation = Allocation(ptr, nbytes, self._device, self._token, next_serial())
        with self._lock:
            self._live[ptr] = allocation
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Return the block to torch's caching allocator."""
        if allocation.owner != self._token:
            raise ForeignAllocationError(f"{allocation!r} was not made by this resource")
        with self._lock:
            if self._live.get(allocation.ptr) != allocation:
                raise DoubleFreeError(f"{allocation!r} was already freed")
            del self._live[allocation.ptr]
        torch.cuda.caching_allocator_delete(allocation.ptr)  # type: ignore[no-untyped-call]
