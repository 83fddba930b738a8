from __future__ import annotations

import gc

import pytest
import torch
from inferno_memory import (
    HostMemoryResource,
    InvalidSizeError,
    MemoryConfigError,
    TorchAllocator,
    torch_tensor,
)


def test_torch_tensor_views_host_memory_without_copying() -> None:
    mr = HostMemoryResource()
    block = mr.allocate(64)
    t = torch_tensor(block, (4, 4), torch.float32)
    t.fill_(3.0)
    assert t.shape == (4, 4)
    assert t.data_ptr() == block.ptr
    assert block.as_numpy("float32").tolist() == [3.0] * 16
    with pytest.raises(InvalidSizeError, match="holds 64"):
        torch_tensor(block, (5, 4), torch.float32)
    mr.deallocate(block)


def test_bfloat16_views_work_although_numpy_lacks_the_dtype() -> None:
    block = HostMemoryResource().allocate(8)
    t = torch_tensor(block, 4, torch.bfloat16)
    t.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16))
    assert t.dtype == torch.bfloat16
    assert t.float().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_allocator_frees_storage_when_the_last_view_dies() -> None:
    mr = HostMemoryResource()
    alloc = TorchAllocator(mr)
    t = alloc.zeros((2, 3, 8), torch.float16, device="cpu")
    assert t.dtype == torch.float16
    assert float(t.sum()) == 0.0
    assert mr.outstanding == 1
    view = t[1]
    del t
    gc.collect()
    # The view still holds the storage.
    assert mr.outstanding == 1
    assert alloc.live_tensors == 1
    del view
    gc.collect()
    assert mr.outstanding == 0
    assert alloc.live_tensors == 0


def test_explicit_release_frees_once() -> None:
    mr = HostMemoryResource()
    alloc = TorchAllocator(mr)
    t = alloc.empty(16, torch.int64)
    alloc.release(t)
    assert mr.outstanding == 0
    with pytest.raises(MemoryConfigError, match="not a live tensor"):
        alloc.release(t)
    del t
    gc.collect()
    # The finalizer must not free a second time once released.
    assert mr.outstanding == 0


def test_device_mismatch_is_refused_and_frees_the_block() -> None:
    mr = HostMemoryResource()
    with pytest.raises(MemoryConfigError, match="device"):
        TorchAllocator(mr).empty(4, torch.float32, device="cuda")
    assert mr.outstanding == 0


def test_zero_sized_tensors_are_allowed() -> None:
    mr = HostMemoryResource()
    t = TorchAllocator(mr).empty((0, 4))
    assert t.numel() == 0
    assert t.shape == (0, 4)
