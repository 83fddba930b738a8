"""`Allocation`, the value every resource hands out, and `Device`, where its bytes live."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inferno_memory.errors import BackendUnavailableError, InvalidSizeError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Allocation",
    "Device",
    "DeviceKind",
    "make_allocation",
    "new_owner_token",
    "next_serial",
    "serial_counter",
]

# Serials make every allocation distinct even when an address is reused, which is how a
# resource tells a double free from a live block that happens to sit at the same address.
_serials = itertools.count(1)
_owners = itertools.count(1)


def next_serial() -> int:
    """A process-wide unique allocation serial (``next`` on a count is atomic under the GIL)."""
    return next(_serials)


def serial_counter() -> Iterator[int]:
    """The iterator behind `next_serial`, for code that draws serials in a hot loop (or in C)."""
    return _serials


def new_owner_token() -> int:
    """A process-wide unique token that a resource stamps on the allocations it makes."""
    return next(_owners)


class DeviceKind(StrEnum):
    """Where an allocation's bytes live."""

    CPU = "cpu"
    """Pageable host memory: viewable as a numpy array."""
    CUDA = "cuda"
    """Device memory of one CUDA device: viewable through ``__cuda_array_interface__``."""
    CUDA_HOST = "cuda_host"
    """Page-locked host memory registered with CUDA: viewable as a numpy array."""


@dataclass(frozen=True, slots=True)
class Device:
    """A memory location: a `DeviceKind` and, for CUDA memory, the device index."""

    kind: DeviceKind
    index: int = 0

    @property
    def is_host(self) -> bool:
        """True when the CPU can read the bytes directly (pageable or pinned host memory)."""
        return self.kind is not DeviceKind.CUDA

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind is DeviceKind.CUDA else str(self.kind.value)


CPU = Device(DeviceKind.CPU)


@dataclass(frozen=True, slots=True)
class Allocation:
    """A block of ``size`` bytes at address ``ptr`` on ``device``.

    Allocations are plain values: they do not keep their memory alive and do not free it;
    the resource that made them (identified by ``owner``) does, on ``deallocate``. ``serial``
    is unique per allocation so a stale copy cannot free a block that reuses the address.

    Views share the bytes, never copy them: on the host ``np.asarray(allocation)`` (or
    `as_numpy`) gives a numpy array; on a CUDA device the ``__cuda_array_interface__`` lets
    ``cupy.asarray`` and ``torch.as_tensor`` wrap it (see `as_cupy` and
    `inferno_memory.bridges.torch_tensor`). Both also speak DLPack (``torch.from_dlpack``,
    ``np.from_dlpack``, ``cupy.from_dlpack``). Views must not outlive the allocation.
    """

    ptr: int
    size: int
    device: Device
    owner: int = 0
    serial: int = 0

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """The numpy array interface (a flat uint8 array of ``size`` bytes), host memory only."""
        if not self.device.is_host:
            raise AttributeError(f"{self.device} memory has no __array_interface__")
        return {
            "version": 3,
            "shape": (self.size,),
            "typestr": "|u1",
            "data": (self.ptr, False),
        }

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """The CUDA array interface (a flat uint8 array of ``size`` bytes), CUDA memory only."""
        if self.device.kind is not DeviceKind.CUDA:
            raise AttributeError(f"{self.device} memory has no __cuda_array_interface__")
        return {
            "version": 3,
            "shape": (self.size,),
            "typestr": "|u1",
            "data": (self.ptr, False),
            "strides": None,
            # None: the producer makes no promise about pending work on any stream.
            "stream": None,
        }

    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: Any = None,
        copy: bool | None = None,
    ) -> Any:
        """A DLPack capsule of the bytes (a flat uint8 tensor), made by numpy for host memory
        and by CuPy for CUDA memory; never a copy (``copy=True`` raises `BufferError`)."""
        if copy:
            raise BufferError("an Allocation is shared, never copied, through DLPack")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"this allocation lives on {self.device}, not {dl_device}")
        if self.device.is_host:
            if max_version is None:
                return self.as_numpy().__dlpack__()
            return self.as_numpy().__dlpack__(max_version=max_version)
        return self.as_cupy().__dlpack__(stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        """DLPack's ``(device type, index)``: ``(1, 0)`` for host memory (pinned included, which
        the CPU reads directly), ``(2, index)`` for CUDA memory."""
        if self.device.is_host:
            return (1, 0)
        return (2, self.device.index)

    def as_numpy(
        self, dtype: npt.DTypeLike = np.uint8, shape: Sequence[int] | int | None = None
    ) -> npt.NDArray[Any]:
        """A numpy view of host memory as ``dtype`` with ``shape`` (default: as many as fit)."""
        dt = np.dtype(dtype)
        count, dims = _element_count(self.size, dt.itemsize, shape)
        raw: npt.NDArray[np.uint8] = np.asarray(self)
        return raw[: count * dt.itemsize].view(dt).reshape(dims)

    def as_cupy(self, dtype: Any = "uint8", shape: Sequence[int] | int | None = None) -> Any:
        """A CuPy view of CUDA memory as ``dtype`` with ``shape``; imports CuPy on first use."""
        if self.device.kind is not DeviceKind.CUDA:
            raise AttributeError(f"as_cupy needs CUDA memory, this allocation is on {self.device}")
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                "as_cupy needs CuPy: pip install 'inferno-memory[cuda12]'"
            ) from exc
        dt = np.dtype(dtype)
        _, dims = _element_count(self.size, dt.itemsize, shape)
        memory = cupy.cuda.UnownedMemory(self.ptr, self.size, self, self.device.index)
        return cupy.ndarray(dims, dtype=dt, memptr=cupy.cuda.MemoryPointer(memory, 0))


def _element_count(
    size: int, itemsize: int, shape: Sequence[int] | int | None
) -> tuple[int, tuple[int, ...]]:
    """Elements of ``itemsize`` bytes in ``shape`` (or all that fit), checked against ``size``."""
    if shape is None:
        count = size // itemsize
        return count, (count,)
    dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidSizeError(f"shape {dims} has a negative dimension")
    count = math.prod(dims)
    if count * itemsize > size:
        raise InvalidSizeError(
            f"shape {dims} of {itemsize}-byte items needs {count * itemsize} bytes, "
            f"the allocation holds {size}"
        )
    return count, dims


# `Allocation(...)` goes through the frozen dataclass __init__, which sets each field with
# object.__setattr__ by name; calling the slot descriptors directly skips the name lookups and
# halves the cost. It builds the same class (same equality, hash and repr), so only the
# pools' hot paths use it.
_new_object = object.__new__
_set_ptr, _set_size, _set_device, _set_owner, _set_serial = (
    Allocation.__dict__[name].__set__ for name in ("ptr", "size", "device", "owner", "serial")
)


def make_allocation(ptr: int, size: int, device: Device, owner: int, serial: int) -> Allocation:
    """``Allocation(ptr, size, device, owner, serial)``, built faster (no argument checks)."""
    allocation: Allocation = _new_object(Allocation)
    _set_ptr(allocation, ptr)
    _set_size(allocation, size)
    _set_device(allocation, device)
    _set_owner(allocation, owner)
    _set_serial(allocation, serial)
    return allocation
