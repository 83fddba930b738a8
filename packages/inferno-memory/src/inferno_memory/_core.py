"""The bookkeeping core of `PoolMemoryResource`: which bytes of which slab are free or used.

`PythonPoolCore` is the reference implementation; the C core in `inferno_memory._native`
does exactly the same, faster. `PoolMemoryResource` owns the slabs, the growth policy, the
lock and the observers; a core only places requests in the slabs it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from inferno_memory.allocation import Allocation, Device, make_allocation
from inferno_memory.freelist import ADDRESS_BITS, SortedKeys
from inferno_memory.sizes import ALIGNMENT
from inferno_memory.stats import StatsCounter

__all__ = ["FOREIGN", "FREED", "NOT_LIVE", "PoolCore", "PoolCoreFactory", "PythonPoolCore"]

FREED = 0
"""`PoolCore.deallocate`: the block is free again."""
FOREIGN = 1
"""`PoolCore.deallocate`: the allocation carries another resource's owner token."""
NOT_LIVE = 2
"""`PoolCore.deallocate`: no live block matches the allocation (a double or stale free)."""

_MASK = ALIGNMENT - 1
_ADDRESS_MASK = (1 << ADDRESS_BITS) - 1


class PoolCore(Protocol):
    """Blocks of a pool's slabs. Not thread-safe: the pool calls it under its own lock.

    A request of ``n`` bytes takes a block of ``n`` rounded up to 256 (256 for 0): the
    smallest free block that holds it, lowest address among equals, split when larger.
    Freeing merges a block with its free neighbours in the same slab.
    """

    def allocate(self, nbytes: int, /) -> Allocation | None:
        """Place ``nbytes`` (an int >= 0) and count it; None when no free block fits."""
        ...

    def deallocate(self, allocation: Allocation, /) -> int:
        """Free ``allocation``'s block: `FREED`, or `FOREIGN` / `NOT_LIVE` (nothing changed)."""
        ...

    def add_slab(self, base: int, size: int, device: Device, /) -> None:
        """Take a slab of ``size`` bytes (a multiple of 256) at ``base`` as one free block."""
        ...

    def release_slab(self, base: int, /) -> bool:
        """Forget the slab at ``base`` if it is one free block; True when it was forgotten."""
        ...

    def blocks(self) -> list[tuple[int, int, bool, int]]:
        """``(address, size, free, slab base)`` of every block, in address order."""
        ...

    def free_count(self) -> int:
        """How many free blocks there are."""
        ...

    def largest_free(self) -> int:
        """The size of the largest free block, 0 when none."""
        ...

    def used(self) -> int:
        """Bytes in live blocks (rounded sizes)."""
        ...

    def counters(self) -> tuple[int, int, int, int, int, int]:
        """Current, peak and total requested bytes, then current, peak and total counts."""
        ...

    def reset_peak(self) -> None:
        """Make the peaks equal the current values."""
        ...


PoolCoreFactory = Callable[[int, type[Allocation], Iterator[int]], PoolCore]
"""Builds a core from the pool's owner token, the `Allocation` class and the serial source."""


@dataclass(slots=True)
class _Block:
    addr: int
    size: int
    slab: int  # base address of the slab holding the block; blocks never span slabs
    free: bool = True
    serial: int = 0  # serial of the live allocation, 0 while free
    requested: int = 0  # bytes the caller asked for (size is that rounded up)


class PythonPoolCore:
    """The pure-Python `PoolCore`: dicts by start and end address, `SortedKeys` for best fit.

    Every operation is O(log n) in the number of blocks.
    """

    __slots__ = (
        "_blocks",
        "_counter",
        "_device",
        "_free",
        "_free_by_end",
        "_serials",
        "_slabs",
        "_token",
        "_used",
    )

    def __init__(
        self, token: int, allocation_type: type[Allocation], serials: Iterator[int]
    ) -> None:
        if allocation_type is not Allocation:
            raise TypeError(f"PythonPoolCore builds Allocation, not {allocation_type!r}")
        self._token = token
        self._serials = serials
        self._slabs: dict[int, tuple[int, Device]] = {}  # base -> (size, device)
        # The one device every slab is on, so allocate skips a lookup; None when mixed or none.
        self._device: Device | None = None
        self._blocks: dict[int, _Block] = {}  # start address -> block, free or used
        self._free_by_end: dict[int, _Block] = {}  # end address -> free block
        self._free = SortedKeys()  # (size << ADDRESS_BITS) | addr of every free block
        self._used = 0
        self._counter = StatsCounter()

    def allocate(self, nbytes: int, /) -> Allocation | None:
        """Place ``nbytes`` (an int >= 0) and count it; None when no free block fits."""
        rounded = ((nbytes + _MASK) & ~_MASK) or ALIGNMENT
        key = self._free.ceiling(rounded << ADDRESS_BITS)
        if key is None:
            return None
        block = self._blocks[key & _ADDRESS_MASK]
        self._remove_free(block)
        if block.size > rounded:
            rest = _Block(block.addr + rounded, block.size - rounded, block.slab)
            block.size = rounded
            self._blocks[rest.addr] = rest
            self._insert_free(rest)
        serial = next(self._serials)
        block.free, block.serial, block.requested = False, serial, nbytes
        self._used += rounded
        self._counter.on_allocate(nbytes)
        device = self._device or self._slabs[block.slab][1]
        return make_allocation(block.addr, nbytes, device, self._token, serial)

    def deallocate(self, allocation: Allocation, /) -> int:
        """Free ``allocation``'s block: `FREED`, or `FOREIGN` / `NOT_LIVE` (nothing changed)."""
        if allocation.owner != self._token:
            return FOREIGN
        block = self._blocks.get(allocation.ptr)
        if block is None or block.free or block.serial != allocation.serial:
            return NOT_LIVE
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
        return FREED

    def add_slab(self, base: int, size: int, device: Device, /) -> None:
        """Take a slab of ``size`` bytes (a multiple of 256) at ``base`` as one free block."""
        if base in self._blocks:
            raise ValueError(f"a block already starts at {base}")
        self._device = device if not self._slabs or self._device == device else None
        self._slabs[base] = (size, device)
        block = _Block(base, size, base)
        self._blocks[base] = block
        self._insert_free(block)

    def release_slab(self, base: int, /) -> bool:
        """Forget the slab at ``base`` if it is one free block; True when it was forgotten."""
        slab = self._slabs.get(base)
        block = self._blocks.get(base)
        if slab is None or block is None or not block.free or block.size != slab[0]:
            return False
        self._remove_free(block)
        del self._blocks[base]
        del self._slabs[base]
        devices = {device for _, device in self._slabs.values()}
        self._device = devices.pop() if len(devices) == 1 else None
        return True

    def blocks(self) -> list[tuple[int, int, bool, int]]:
        """``(address, size, free, slab base)`` of every block, in address order."""
        return [
            (b.addr, b.size, b.free, b.slab)
            for b in sorted(self._blocks.values(), key=lambda b: b.addr)
        ]

    def free_count(self) -> int:
        """How many free blocks there are."""
        return len(self._free)

    def largest_free(self) -> int:
        """The size of the largest free block, 0 when none."""
        last = self._free.last()
        return 0 if last is None else last >> ADDRESS_BITS

    def used(self) -> int:
        """Bytes in live blocks (rounded sizes)."""
        return self._used

    def counters(self) -> tuple[int, int, int, int, int, int]:
        """Current, peak and total requested bytes, then current, peak and total counts."""
        c = self._counter
        return (
            c.current_bytes,
            c.peak_bytes,
            c.total_bytes,
            c.current_count,
            c.peak_count,
            c.total_count,
        )

    def reset_peak(self) -> None:
        """Make the peaks equal the current values."""
        self._counter.reset_peak()

    def _insert_free(self, block: _Block) -> None:
        self._free.add((block.size << ADDRESS_BITS) | block.addr)
        self._free_by_end[block.addr + block.size] = block

    def _remove_free(self, block: _Block) -> None:
        self._free.remove((block.size << ADDRESS_BITS) | block.addr)
        del self._free_by_end[block.addr + block.size]
