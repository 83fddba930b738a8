"""Thin bridges to torch and CuPy; each imports its library only when called.

* `torch_tensor` views an allocation as a torch tensor (no copy, no ownership).
* `TorchAllocator` makes tensors whose storage comes from a resource and is freed when the
  tensor (and every view of it) is gone, or earlier on `TorchAllocator.release`.
* `use_with_cupy` routes CuPy's device allocations through a resource.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from inferno_memory.allocation import Allocation, DeviceKind
from inferno_memory.errors import BackendUnavailableError, InvalidSizeError, MemoryConfigError

if TYPE_CHECKING:
    import torch

    from inferno_memory.protocols import MemoryResource

__all__ = [
    "CupyAllocatorBinding",
    "TorchAllocator",
    "cupy_allocator",
    "torch_tensor",
    "use_with_cupy",
]

# stdlib logging keeps the core numpy-only; structlog, when configured, renders these records.
_log = logging.getLogger(__name__)


def _free(resource: MemoryResource, allocation: Allocation) -> None:
    # Runs from a finalizer, possibly during garbage collection: never let an error escape.
    try:
        resource.deallocate(allocation)
    except Exception:
        _log.exception("deallocate failed for %r", allocation)


class _Lease:
    """Owns one allocation and frees it exactly once: on `release` or when collected.

    Views built from a lease (numpy arrays, torch tensors) hold a reference to it, so the
    memory lives exactly as long as the last view.
    """

    __slots__ = ("__weakref__", "_finalizer", "allocation")

    def __init__(self, resource: MemoryResource, allocation: Allocation) -> None:
        self.allocation = allocation
        # The callback must not reference self, or the lease would never be collected.
        self._finalizer = weakref.finalize(self, _free, resource, allocation)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def release(self) -> bool:
        """Free the allocation now; False when it was already freed."""
        if not self._finalizer.alive:
            return False
        self._finalizer()
        return True

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return self.allocation.__array_interface__

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return self.allocation.__cuda_array_interface__


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("the torch bridge needs torch installed") from exc
    return torch


def _as_torch(
    holder: Allocation | _Lease,
    allocation: Allocation,
    shape: Sequence[int] | int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """A tensor over ``allocation``'s bytes that keeps ``holder`` referenced."""
    tch = _import_torch()
    dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidSizeError(f"shape {dims} has a negative dimension")
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > allocation.size:
        raise InvalidSizeError(
            f"shape {dims} of {dtype} needs {nbytes} bytes, the allocation holds {allocation.size}"
        )
    if allocation.device.kind is DeviceKind.CUDA:
        # torch reads __cuda_array_interface__ and keeps `holder` referenced by the storage.
        raw = tch.as_tensor(holder, device=f"cuda:{allocation.device.index}")
    else:
        # numpy keeps `holder` as the array's base; torch.from_numpy keeps the array.
        raw = tch.from_numpy(np.asarray(holder))
    # Reinterpret the bytes (works for dtypes numpy lacks, such as bfloat16), then shape them.
    tensor: torch.Tensor = raw[:nbytes].view(dtype).view(dims)
    return tensor


def torch_tensor(
    allocation: Allocation, shape: Sequence[int] | int, dtype: torch.dtype
) -> torch.Tensor:
    """View ``allocation`` as a torch tensor of ``shape`` and ``dtype`` without copying.

    The tensor does not own the memory: the allocation must stay allocated while the tensor
    is used. Use `TorchAllocator` for tensors that own their storage.
    """
    return _as_torch(allocation, allocation, shape, dtype)


class TorchAllocator:
    """Makes torch tensors whose storage comes from ``resource``.

    The allocation behind a tensor is freed when the tensor and all its views are collected,
    or at once by `release` (after which the tensor must not be used). Works with CUDA
    resources and, on the CPU, with `HostMemoryResource` or a pool over it. Thread-safe.
    """

    def __init__(self, resource: MemoryResource) -> None:
        self._resource = resource
        self._lock = threading.Lock()
        # Weak values: this map must not keep a lease (hence its memory) alive.
        self._leases: weakref.WeakValueDictionary[int, _Lease] = weakref.WeakValueDictionary()

    @property
    def resource(self) -> MemoryResource:
        """The resource tensors are allocated from."""
        return self._resource

    def empty(
        self,
        shape: Sequence[int] | int,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype`` (default float32).

        ``device``, when given, must match where the resource allocates (``"cpu"``,
        ``"cuda"``, ``"cuda:1"``); a mismatch raises `MemoryConfigError`.
        """
        tch = _import_torch()
        dtype = tch.float32 if dtype is None else dtype
        dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise InvalidSizeError(f"shape {dims} has a negative dimension")
        allocation = self._resource.allocate(math.prod(dims) * dtype.itemsize)
        lease = _Lease(self._resource, allocation)
        try:
            tensor = _as_torch(lease, allocation, dims, dtype)
            if device is not None:
                _check_device(tch.device(device), tensor.device)
        except BaseException:
            lease.release()
            raise
        with self._lock:
            self._leases[allocation.ptr] = lease
        return tensor

    def zeros(
        self,
        shape: Sequence[int] | int,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Like `empty`, filled with zeros."""
        return self.empty(shape, dtype, device).zero_()

    def release(self, tensor: torch.Tensor) -> None:
        """Free the storage of ``tensor`` (made by `empty`/`zeros`, or a view of one) now.

        Raises `MemoryConfigError` when the tensor's storage did not come from this allocator
        or was already released.
        """
        ptr = int(tensor.untyped_storage().data_ptr())
        with self._lock:
            lease = self._leases.pop(ptr, None)
        if lease is None or not lease.release():
            raise MemoryConfigError(
                f"storage at {ptr:#x} is not a live tensor of this TorchAllocator", field="tensor"
            )

    @property
    def live_tensors(self) -> int:
        """How many storages made by this allocator are still allocated."""
        with self._lock:
            return sum(1 for lease in self._leases.values() if lease.alive)


def _check_device(wanted: torch.device, actual: torch.device) -> None:
    if wanted.type != actual.type or (wanted.index is not None and wanted.index != actual.index):
        raise MemoryConfigError(
            f"asked for {wanted} but the resource allocates on {actual}", field="device"
        )


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(
            "the CuPy bridge needs CuPy: pip install 'inferno-memory[cuda12]'"
        ) from exc
    return cupy


def cupy_allocator(resource: MemoryResource) -> Callable[[int], Any]:
    """A CuPy allocator function (``size -> cupy.cuda.MemoryPointer``) over ``resource``.

    Each CuPy buffer holds a lease on its allocation, freed when CuPy drops the buffer.
    """
    cupy = _import_cupy()

    def allocate(size: int) -> Any:
        allocation = resource.allocate(size)
        if allocation.device.kind is not DeviceKind.CUDA:
            _free(resource, allocation)
            raise MemoryConfigError(
                f"CuPy needs CUDA memory, the resource allocates on {allocation.device}",
                field="resource",
            )
        lease = _Lease(resource, allocation)
        memory = cupy.cuda.UnownedMemory(
            allocation.ptr, allocation.size, lease, allocation.device.index
        )
        return cupy.cuda.MemoryPointer(memory, 0)

    return allocate


class CupyAllocatorBinding:
    """CuPy's allocator set to a resource; as a context manager it restores the previous one."""

    def __init__(self, resource: MemoryResource) -> None:
        cupy = _import_cupy()
        self._cupy = cupy
        self._previous = cupy.cuda.get_allocator()
        self.allocator = cupy_allocator(resource)
        cupy.cuda.set_allocator(self.allocator)

    def restore(self) -> None:
        """Put back the allocator CuPy had before this binding."""
        self._cupy.cuda.set_allocator(self._previous)

    def __enter__(self) -> CupyAllocatorBinding:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def use_with_cupy(resource: MemoryResource) -> CupyAllocatorBinding:
    """Make CuPy allocate device memory from ``resource``.

    Takes effect at once (process-wide, like ``cupy.cuda.set_allocator``); used as
    ``with use_with_cupy(pool): ...`` it restores the previous allocator on exit.
    """
    return CupyAllocatorBinding(resource)
