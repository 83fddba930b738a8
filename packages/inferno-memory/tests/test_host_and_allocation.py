from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from inferno_memory import (
    Allocation,
    DeviceKind,
    DoubleFreeError,
    ForeignAllocationError,
    HostMemoryResource,
    InvalidSizeError,
    MemoryConfigError,
    MemoryResource,
)


def test_host_resource_is_a_memory_resource() -> None:
    assert isinstance(HostMemoryResource(), MemoryResource)


def test_host_allocations_are_aligned_distinct_and_writable() -> None:
    mr = HostMemoryResource()
    blocks = [mr.allocate(n) for n in (0, 1, 100, 4096)]
    assert [b.size for b in blocks] == [0, 1, 100, 4096]
    assert all(b.ptr % 256 == 0 for b in blocks)
    assert len({b.ptr for b in blocks}) == len(blocks)
    assert all(b.device.kind is DeviceKind.CPU for b in blocks)
    view = blocks[3].as_numpy(np.float32, (32, 32))
    view[:] = 2.5
    # A second view sees the same bytes: views share memory, never copy.
    assert float(blocks[3].as_numpy(np.float32).sum()) == 2.5 * 1024
    assert np.shares_memory(view, np.asarray(blocks[3]))
    for b in blocks:
        mr.deallocate(b)
    assert mr.outstanding == 0


def test_as_numpy_rejects_shapes_larger_than_the_block() -> None:
    mr = HostMemoryResource()
    block = mr.allocate(16)
    with pytest.raises(InvalidSizeError, match="needs 32 bytes"):
        block.as_numpy(np.float32, (2, 4))
    with pytest.raises(InvalidSizeError, match="negative"):
        block.as_numpy(np.float32, (-1,))


def test_cuda_views_are_refused_on_host_memory() -> None:
    block = HostMemoryResource().allocate(8)
    assert not hasattr(block, "__cuda_array_interface__")
    with pytest.raises(AttributeError, match="CUDA"):
        block.as_cupy()


def test_double_free_and_foreign_allocation_raise_typed_errors() -> None:
    mr, other = HostMemoryResource(), HostMemoryResource()
    block = mr.allocate(64)
    with pytest.raises(ForeignAllocationError):
        other.deallocate(block)
    mr.deallocate(block)
    with pytest.raises(DoubleFreeError):
        mr.deallocate(block)
    assert not mr.owns(block)


def test_stale_copy_cannot_free_a_block_that_reuses_the_address() -> None:
    mr = HostMemoryResource()
    block = mr.allocate(64)
    stale = Allocation(block.ptr, block.size, block.device, block.owner, block.serial - 1)
    with pytest.raises(DoubleFreeError):
        mr.deallocate(stale)
    assert mr.owns(block)


def test_bad_alignment_is_a_config_error() -> None:
    with pytest.raises(MemoryConfigError, match="alignment"):
        HostMemoryResource(alignment=100)


def test_importing_the_package_imports_neither_torch_nor_cupy() -> None:
    code = (
        "import sys, inferno_memory; "
        "bad = [m for m in ('torch', 'cupy') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dlpack_shares_host_bytes_with_numpy_and_torch() -> None:
    resource = HostMemoryResource()
    a = resource.allocate(64)
    assert a.__dlpack_device__() == (1, 0)
    view = np.from_dlpack(a)
    assert view.dtype == np.uint8
    assert view.shape == (64,)
    view[:] = 7
    torch = pytest.importorskip("torch")
    t = torch.from_dlpack(a)
    assert t.data_ptr() == a.ptr
    assert int(t.sum()) == 7 * 64
    t[0] = 1
    assert a.as_numpy()[0] == 1
    with pytest.raises(BufferError, match="never copied"):
        a.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="not"):
        a.__dlpack__(dl_device=(2, 0))
    del view, t
    resource.deallocate(a)
