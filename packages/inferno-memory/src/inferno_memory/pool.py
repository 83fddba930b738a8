"""`PoolMemoryResource`: slabs from an upstream, best-fit sub-allocation, O(log n) per call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from inferno_memory.allocation import Allocation, new_owner_token, next_serial
from inferno_memory.errors import (
    DoubleFreeError,
    ForeignAllocationError,
    MemoryConfigError,
    OutOfMemoryError,
)
from inferno_memory.freelist import ADDRESS_BITS, SortedKeys, unpack
from inferno_memory.host import check_request
from inferno_memory.observers import Observers
from inferno_memory.protocols import MemoryResource
from inferno_memory.sizes import ALIGNMENT, Size, align_up, format_size, parse_size
from inferno_memory.stats import MemoryStats, StatsCounter

__all__ = ["DEFAULT_SLAB_SIZE", "BlockInfo", "PoolMemoryResource"]

_MASK = ALIGNMENT - 1

DEFAULT_SLAB_SIZE = 1 << 20
"""Slab size when neither ``slab_size`` nor ``initial_size`` says otherwise (1 MiB)."""


@dataclass(slots=True)
class _Block:
    addr: int
    size: int
    slab: int  # base address of the slab holding the block; blocks never span slabs
    free: bool = True
    serial: int = 0  # serial of the live allocation, 0 while free
    requested: int = 0  # bytes the caller asked for (size is that rounded up)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One block of the pool's layout, as returned by `PoolMemoryResource.blocks`."""

    addr: int
    size: int
    free: bool
    slab: int


class PoolMemoryResource:
    """A pool that takes slabs from ``upstream`` and sub-allocates them.

    * Growth: the pool reserves ``initial_size`` at construction, then a slab of
      ``max(request, slab_size)`` whenever no free block fits, never holding more than
      ``maximum_size`` in all (unbounded when None). ``slab_size`` defaults to
      ``initial_size``, or 1 MiB when that is 0.
    * Placement: best fit, the smallest free block that holds the request (lowest address
      among equals), split when larger; blocks are multiples of 256 bytes and 256-aligned.
    * Freeing coalesces a block with free neighbours in the same slab, so a slab whose blocks
      are all free is one free block that `release` can hand back upstream.
    * Every operation is O(log n) in the number of blocks and runs under one lock.
    """

    def __init__(
        self,
        upstream: MemoryResource,
        initial_size: Size = 0,
        maximum_size: Size | None = None,
        *,
        slab_size: Size | None = None,
    ) -> None:
        initial = align_up(parse_size(initial_size, field="initial_size"))
        maximum = None if maximum_size is None else parse_size(maximum_size, field="maximum_size")
        if maximum is not None and initial > maximum:
            raise MemoryConfigError(
                f"initial_size {format_size(initial)} exceeds maximum_size {format_size(maximum)}",
                field="initial_size",
            )
        slab = initial or DEFAULT_SLAB_SIZE
        if slab_size is not None:
            slab = align_up(parse_size(slab_size, field="slab_size"))
            if slab == 0:
                raise MemoryConfigError("must be positive", field="slab_size")
        self._upstream = upstream
        self._maximum = maximum
        self._slab_size = slab
        self._token = new_owner_token()
        self._lock = threading.Lock()
        self._slabs: dict[int, Allocation] = {}  # base address -> upstream allocation
        self._blocks: dict[int, _Block] = {}  # start address -> block, free or used
        self._free_by_end: dict[int, _Block] = {}  # end address -> free block
        self._free = SortedKeys()  # pack(size, addr) of every free block
        self._reserved = 0
        self._used = 0  # rounded bytes of live blocks
        self._counter = StatsCounter()
        self._observers = Observers()
        if initial:
            with self._lock:
                self._add_slab(initial, requested=0)

    # -- MemoryResource -------------------------------------------------------------------

    def allocate(self, nbytes: int) -> Allocation:
        """Best-fit ``nbytes`` from the free blocks, growing by a slab when none fits."""
        if type(nbytes) is not int or nbytes < 0:  # exact-int fast path; validate the rest
            nbytes = check_request(nbytes)
        rounded = ((nbytes + _MASK) & ~_MASK) or ALIGNMENT
        with self._lock:
            key = self._free.ceiling(rounded << ADDRESS_BITS)
            block = self._grow(rounded, nbytes) if key is None else self._blocks[unpack(key)[1]]
            self._remove_free(block)
            if block.size > rounded:
                rest = _Block(block.addr + rounded, block.size - rounded, block.slab)
                block.size = rounded
                self._blocks[rest.addr] = rest
                self._insert_free(rest)
            serial = next_serial()
            block.free, block.serial, block.requested = False, serial, nbytes
            self._used += rounded
            self._counter.on_allocate(nbytes)
            device = self._slabs[block.slab].device
            allocation = Allocation(block.addr, nbytes, device, self._token, serial)
        if self._observers:
            self._observers.notify()
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Free ``allocation`` and merge it with free neighbours in its slab."""
        if allocation.owner != self._token:
            raise ForeignAllocationError(f"{allocation!r} was not made by this pool")
        with self._lock:
            block = self._blocks.get(allocation.ptr)
            if block is None or block.free or block.serial != allocation.serial:
                raise DoubleFreeError(f"{allocation!r} was already freed by this pool")
            self._counter.on_deallocate(block.requested)
            self._used -= block.size
            block.free, block.serial, block.requested = True, 0, 0
            right = self._blocks.get(block.addr + block.size)
            if right is not None and right.free and right.slab == block.slab:
                self._remove_free(right)
                del self._blocks[right.addr]
                block.size += right.size
            left = self._free_by_end.get(block.addr)
            if left is not None and left.slab == block.slab:
                self._remove_free(left)
                del self._blocks[block.addr]
                left.size += block.size
                block = left
            self._insert_free(block)
        if self._observers:
            self._observers.notify()

    # -- pool management ------------------------------------------------------------------

    def release(self) -> int:
        """Hand every wholly free slab back upstream; returns the bytes released."""
        released = 0
        with self._lock:
            for base, slab in list(self._slabs.items()):
                block = self._blocks[base]
                if block.free and block.size == slab.size:
                    self._remove_free(block)
                    del self._blocks[base]
                    del self._slabs[base]
                    self._upstream.deallocate(slab)
                    self._reserved -= slab.size
                    released += slab.size
        return released

    def stats(self) -> MemoryStats:
        """Requested bytes and counts, ``reserved_bytes`` held upstream, ``maximum_size``."""
        with self._lock:
            return self._counter.snapshot(limit_bytes=self._maximum, reserved_bytes=self._reserved)

    def reset_peak(self) -> None:
        """Make the peak statistics equal the current ones."""
        with self._lock:
            self._counter.reset_peak()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after every allocate/deallocate; returns the unsubscribe function."""
        return self._observers.subscribe(callback)

    @property
    def upstream(self) -> MemoryResource:
        """The resource slabs come from."""
        return self._upstream

    @property
    def limit_bytes(self) -> int | None:
        """``maximum_size``: the most the pool will reserve upstream (None: unbounded)."""
        return self._maximum

    @property
    def reserved_bytes(self) -> int:
        """Bytes held from upstream, used or free."""
        with self._lock:
            return self._reserved

    @property
    def used_bytes(self) -> int:
        """Bytes in live blocks, after rounding each request up to 256 bytes."""
        with self._lock:
            return self._used

    @property
    def slab_count(self) -> int:
        """How many slabs the pool holds."""
        with self._lock:
            return len(self._slabs)

    @property
    def free_block_count(self) -> int:
        """How many free blocks there are (1 per slab when nothing is allocated)."""
        with self._lock:
            return len(self._free)

    @property
    def largest_free_block(self) -> int:
        """Size of the largest free block, 0 when none."""
        with self._lock:
            last = self._free.last()
        return 0 if last is None else unpack(last)[0]

    def blocks(self) -> list[BlockInfo]:
        """Every block in address order: a debugging view, O(n log n)."""
        with self._lock:
            return [
                BlockInfo(b.addr, b.size, b.free, b.slab)
                for b in sorted(self._blocks.values(), key=lambda b: b.addr)
            ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reserved={self._reserved}, used={self._used}, "
            f"slabs={len(self._slabs)}, maximum={self._maximum})"
        )

    # -- internals (the lock is held) -----------------------------------------------------

    def _insert_free(self, block: _Block) -> None:
        self._free.add((block.size << ADDRESS_BITS) | block.addr)
        self._free_by_end[block.addr + block.size] = block

    def _remove_free(self, block: _Block) -> None:
        self._free.remove((block.size << ADDRESS_BITS) | block.addr)
        del self._free_by_end[block.addr + block.size]

    def _grow(self, rounded: int, requested: int) -> _Block:
        """Add a slab that can hold ``rounded`` bytes and return its (free) block."""
        size = max(rounded, self._slab_size)
        if self._maximum is not None:
            room = self._maximum - self._reserved
            if rounded > room:
                raise self._out_of_memory(
                    requested,
                    f"the pool would exceed its maximum_size by {format_size(rounded - room)}",
                )
            size = min(size, room)
        try:
            return self._add_slab(size, requested)
        except OutOfMemoryError:
            if size == rounded:
                raise
        # The upstream could not give a full slab: settle for exactly what is needed.
        return self._add_slab(rounded, requested)

    def _add_slab(self, size: int, requested: int) -> _Block:
        try:
            slab = self._upstream.allocate(size)
        except OutOfMemoryError as exc:
            raise self._out_of_memory(
                requested, f"upstream refused a slab of {format_size(size)} ({exc})"
            ) from exc
        self._slabs[slab.ptr] = slab
        self._reserved += size
        block = _Block(slab.ptr, size, slab.ptr)
        self._blocks[block.addr] = block
        self._insert_free(block)
        return block

    def _out_of_memory(self, requested: int, reason: str) -> OutOfMemoryError:
        stats = self._counter.snapshot(limit_bytes=self._maximum, reserved_bytes=self._reserved)
        last = self._free.last()
        largest = 0 if last is None else unpack(last)[0]
        return OutOfMemoryError(
            f"pool cannot allocate {format_size(requested)}: {reason}; {stats.describe()}, "
            f"largest free block {format_size(largest)}, {len(self._free)} free blocks",
            requested=requested,
            stats=stats,
        )
