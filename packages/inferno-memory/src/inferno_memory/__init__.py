"""Embeddable memory pools for CUDA (CuPy) and host memory, with RMM-class adaptors.

Importing this package needs numpy only; CuPy and torch are imported by the functions that
use them.
"""

from inferno_memory.adaptors import (
    LimitingAdaptor,
    StatisticsAdaptor,
    TrackedAllocation,
    TrackingAdaptor,
)
from inferno_memory.allocation import Allocation, Device, DeviceKind
from inferno_memory.bridges import (
    CupyAllocatorBinding,
    TorchAllocator,
    cupy_allocator,
    torch_tensor,
    use_with_cupy,
)
from inferno_memory.cuda import CudaMemoryPool, CudaMemoryResource, PinnedHostMemoryResource
from inferno_memory.errors import (
    BackendUnavailableError,
    DoubleFreeError,
    ForeignAllocationError,
    InfernoMemoryError,
    InvalidSizeError,
    LimitExceededError,
    MemoryConfigError,
    OutOfMemoryError,
    ResourceBusyError,
)
from inferno_memory.host import HostMemoryResource
from inferno_memory.pool import BlockInfo, CoreChoice, PoolMemoryResource
from inferno_memory.protocols import GpuAllocator, MemoryResource, StatisticsSource
from inferno_memory.sizes import ALIGNMENT, Size, format_size, parse_size
from inferno_memory.stats import MemoryStats
from inferno_memory.tracker import MemoryAlertListener, MemoryTracker

__all__ = [
    "ALIGNMENT",
    "Allocation",
    "BackendUnavailableError",
    "BlockInfo",
    "CoreChoice",
    "CudaMemoryPool",
    "CudaMemoryResource",
    "CupyAllocatorBinding",
    "Device",
    "DeviceKind",
    "DoubleFreeError",
    "ForeignAllocationError",
    "GpuAllocator",
    "HostMemoryResource",
    "InfernoMemoryError",
    "InvalidSizeError",
    "LimitExceededError",
    "LimitingAdaptor",
    "MemoryAlertListener",
    "MemoryConfigError",
    "MemoryResource",
    "MemoryStats",
    "MemoryTracker",
    "OutOfMemoryError",
    "PinnedHostMemoryResource",
    "PoolMemoryResource",
    "ResourceBusyError",
    "Size",
    "StatisticsAdaptor",
    "StatisticsSource",
    "TorchAllocator",
    "TrackedAllocation",
    "TrackingAdaptor",
    "cupy_allocator",
    "format_size",
    "parse_size",
    "torch_tensor",
    "use_with_cupy",
]
