"""CUDA resources over CuPy: device memory, pinned host memory, and `CudaMemoryPool`.

CuPy is imported when a resource is built, never at package import. Only the unversioned
``cupy`` module is imported, so ``cupy-cuda12x`` (the ``[cuda12]`` extra) and an already
installed ``cupy-cuda13x`` both work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from inferno_memory._lock import ResourceLock
from inferno_memory.allocation import Allocation, Device, DeviceKind, new_owner_token, next_serial
from inferno_memory.errors import (
    BackendUnavailableError,
    DoubleFreeError,
    ForeignAllocationError,
    OutOfMemoryError,
)
from inferno_memory.host import check_request
from inferno_memory.pool import CoreChoice, PoolMemoryResource
from inferno_memory.sizes import Size, format_size

if TYPE_CHECKING:
    from inferno_memory.protocols import MemoryResource

__all__ = ["CudaMemoryPool", "CudaMemoryResource", "PinnedHostMemoryResource", "import_cupy"]

# cudaErrorMemoryAllocation: the one runtime error that means "out of memory".
_CUDA_ERROR_MEMORY_ALLOCATION = 2
# cudaHostAllocPortable: pinned memory usable from every CUDA context, not just the current one.
_CUDA_HOST_ALLOC_PORTABLE = 1


def import_cupy() -> Any:
    """Import CuPy and check that a CUDA device exists; `BackendUnavailableError` otherwise."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "CUDA memory needs CuPy: pip install 'inferno-memory[cuda12]' "
            "(or any cupy-cuda* wheel matching your driver)"
        ) from exc
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        raise BackendUnavailableError(f"CuPy cannot reach a CUDA device: {exc}") from exc
    if count == 0:
        raise BackendUnavailableError("CuPy found no CUDA device")
    return cupy


class _CupyResource:
    """Shared bookkeeping: live allocations, ownership, double-free detection."""

    _name = "CUDA"

    def __init__(self, device: Device) -> None:
        self._cupy = import_cupy()
        count = int(self._cupy.cuda.runtime.getDeviceCount())
        if not 0 <= device.index < count:
            raise BackendUnavailableError(
                f"CUDA device {device.index} does not exist ({count} device(s) visible)"
            )
        self._device = device
        self._token = new_owner_token()
        self._lock = ResourceLock()
        self._live: dict[int, Allocation] = {}

    @property
    def device(self) -> Device:
        """Where this resource's allocations live."""
        return self._device

    def _allocate(self, nbytes: int, malloc: Callable[[int], int]) -> Allocation:
        nbytes = check_request(nbytes)
        runtime = self._cupy.cuda.runtime
        try:
            with self._cupy.cuda.Device(self._device.index):
                # One byte at least: a zero-byte cudaMalloc returns a null pointer.
                ptr = int(malloc(max(nbytes, 1)))
        except runtime.CUDARuntimeError as exc:
            if getattr(exc, "status", None) == _CUDA_ERROR_MEMORY_ALLOCATION:
                raise OutOfMemoryError(
                    f"{self._name} memory on {self._device}: cannot allocate "
                    f"{format_size(nbytes)} ({exc})",
                    requested=nbytes,
                ) from exc
            raise
        allocation = Allocation(ptr, nbytes, self._device, self._token, next_serial())
        with self._lock:
            self._live[ptr] = allocation
        return allocation

    def _deallocate(self, allocation: Allocation, free: Callable[[int], None]) -> None:
        if allocation.owner != self._token:
            raise ForeignAllocationError(
                f"{allocation!r} was not made by this {self._name} resource"
            )
        # Queue the subclass's deallocate, which is what called this.
        if self._lock.defer_if_busy(cast("MemoryResource", self), allocation):
            return  # a finalizer during a collection: freed when the lock is released
        with self._lock:
            if self._live.get(allocation.ptr) != allocation:
                raise DoubleFreeError(f"{allocation!r} was already freed")
            del self._live[allocation.ptr]
        with self._cupy.cuda.Device(self._device.index):
            free(allocation.ptr)

    @property
    def outstanding(self) -> int:
        """How many allocations are live."""
        with self._lock:
            return len(self._live)


class CudaMemoryResource(_CupyResource):
    """Device memory of one CUDA device, straight from ``cudaMalloc``/``cudaFree``.

    Every call reaches the driver (and ``cudaFree`` synchronizes the device), so put a
    `PoolMemoryResource` (or `CudaMemoryPool`) in front of it. Thread-safe.
    """

    def __init__(self, device: int = 0) -> None:
        super().__init__(Device(DeviceKind.CUDA, device))

    def allocate(self, nbytes: int) -> Allocation:
        """``cudaMalloc`` ``nbytes`` on this resource's device (256-byte aligned)."""
        return self._allocate(nbytes, self._cupy.cuda.runtime.malloc)

    def deallocate(self, allocation: Allocation) -> None:
        """``cudaFree`` the allocation."""
        self._deallocate(allocation, self._cupy.cuda.runtime.free)

    def __repr__(self) -> str:
        return f"CudaMemoryResource(device={self._device.index})"


class PinnedHostMemoryResource(_CupyResource):
    """Page-locked host memory (``cudaHostAlloc``), for fast host<->device copies.

    Allocations are on the host (viewable with numpy) and registered with CUDA so copies
    from them can run asynchronously. Thread-safe.
    """

    _name = "pinned host"

    def __init__(self, device: int = 0) -> None:
        super().__init__(Device(DeviceKind.CUDA_HOST, device))

    def allocate(self, nbytes: int) -> Allocation:
        """``cudaHostAlloc`` ``nbytes`` of portable pinned memory."""
        runtime = self._cupy.cuda.runtime
        return self._allocate(nbytes, lambda n: runtime.hostAlloc(n, _CUDA_HOST_ALLOC_PORTABLE))

    def deallocate(self, allocation: Allocation) -> None:
        """``cudaFreeHost`` the allocation."""
        self._deallocate(allocation, self._cupy.cuda.runtime.freeHost)

    def __repr__(self) -> str:
        return f"PinnedHostMemoryResource(device={self._device.index})"


class CudaMemoryPool(PoolMemoryResource):
    """A `PoolMemoryResource` over a `CudaMemoryResource` on ``device``.

    ``initial_size`` is reserved at once, further slabs of ``slab_size`` as needed, up to
    ``maximum_size``. ``core`` picks the bookkeeping core as for `PoolMemoryResource`.
    """

    def __init__(
        self,
        initial_size: Size = 0,
        maximum_size: Size | None = None,
        *,
        device: int = 0,
        slab_size: Size | None = None,
        core: CoreChoice = "auto",
    ) -> None:
        super().__init__(
            CudaMemoryResource(device), initial_size, maximum_size, slab_size=slab_size, core=core
        )
