"""CUDA paths: skipped (by conftest) unless CuPy imports and a CUDA device exists."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from inferno_memory import (
    CudaMemoryPool,
    CudaMemoryResource,
    DeviceKind,
    DoubleFreeError,
    PinnedHostMemoryResource,
    StatisticsAdaptor,
    TorchAllocator,
    torch_tensor,
    use_with_cupy,
)

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy() -> Any:
    import cupy

    return cupy


def test_cuda_resource_allocations_are_device_memory(cupy: Any) -> None:
    mr = CudaMemoryResource(0)
    a = mr.allocate(4096)
    assert a.device.kind is DeviceKind.CUDA
    assert a.ptr % 256 == 0
    arr = a.as_cupy(np.float32, (32, 32))
    arr[:] = 3
    # A second zero-copy view through __cuda_array_interface__ sees the same bytes.
    again = cupy.asarray(a).view(cupy.float32)
    assert float(again.sum()) == 3 * 1024
    mr.deallocate(a)
    with pytest.raises(DoubleFreeError):
        mr.deallocate(a)
    assert mr.outstanding == 0


def test_pinned_host_memory_is_a_numpy_view(cupy: Any) -> None:
    mr = PinnedHostMemoryResource()
    a = mr.allocate(1024)
    assert a.device.kind is DeviceKind.CUDA_HOST
    host = a.as_numpy(np.int32)
    host[:] = np.arange(256, dtype=np.int32)
    dev = cupy.asarray(host)
    assert int(dev.sum()) == sum(range(256))
    mr.deallocate(a)


def test_cuda_memory_pool_grows_and_releases(cupy: Any) -> None:
    pool = CudaMemoryPool("1MiB", "8MiB")
    a = pool.allocate(3 << 20)
    b = pool.allocate(1000)
    assert pool.slab_count == 2
    assert pool.stats().current_bytes == (3 << 20) + 1000
    pool.deallocate(a)
    pool.deallocate(b)
    reserved = pool.reserved_bytes
    assert pool.release() == reserved
    assert pool.reserved_bytes == 0


@pytest.mark.parametrize("core_name", ["python", "native"])
def test_cuda_memory_pool_runs_on_either_core(cupy: Any, core_name: str) -> None:
    if core_name == "native":
        from inferno_memory._native import load_native_core

        native = load_native_core()
        if native.module is None:
            pytest.skip(f"native pool core unavailable: {native.reason}")
    pool = CudaMemoryPool("1MiB", core=core_name)  # type: ignore[arg-type]
    assert pool.core == core_name
    a = pool.allocate(1000)
    assert a.device.kind is DeviceKind.CUDA
    a.as_cupy(np.uint8)[:] = 7
    assert int(a.as_cupy(np.uint8).sum()) == 7 * 1000
    pool.deallocate(a)
    assert pool.release() == 1 << 20


def test_use_with_cupy_routes_allocations_and_restores(cupy: Any) -> None:
    pool = StatisticsAdaptor(CudaMemoryPool("4MiB"))
    previous = cupy.cuda.get_allocator()
    with use_with_cupy(pool):
        x = cupy.ones((256, 256), dtype=cupy.float32)
        assert pool.stats().current_bytes >= x.nbytes
        assert float(x.sum()) == 256 * 256
        del x
        gc.collect()
        assert pool.stats().current_bytes == 0
    assert cupy.cuda.get_allocator() is previous


def test_torch_views_of_cuda_memory() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    pool = CudaMemoryPool("4MiB")
    a = pool.allocate(4096)
    t = torch_tensor(a, (1024,), torch.float32)
    assert t.is_cuda
    assert t.data_ptr() == a.ptr
    t.fill_(2.0)
    assert float(t.sum()) == 2048.0
    del t
    pool.deallocate(a)

    alloc = TorchAllocator(pool)
    kv = alloc.zeros((2, 16, 4, 64), torch.bfloat16, device="cuda")
    assert kv.device.type == "cuda"
    assert kv.dtype == torch.bfloat16
    assert pool.stats().current_count == 1
    del kv
    gc.collect()
    torch.cuda.synchronize()
    assert pool.stats().current_count == 0


def test_dlpack_shares_cuda_bytes_with_torch(cupy: Any) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    pool = CudaMemoryPool("4MiB")
    a = pool.allocate(4096)
    assert a.__dlpack_device__() == (2, 0)
    t = torch.from_dlpack(a)
    assert t.is_cuda
    assert t.data_ptr() == a.ptr
    t.fill_(3)
    assert int(cupy.asarray(a).sum()) == 3 * 4096
    del t
    pool.deallocate(a)
