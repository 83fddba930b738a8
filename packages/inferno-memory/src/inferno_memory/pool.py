"""`PoolMemoryResource`: slabs from an upstream, best-fit sub-allocation, O(log n) per call."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from inferno_memory._core import FOREIGN, PoolCore, PoolCoreFactory, PythonPoolCore
from inferno_memory._lock import ResourceLock
from inferno_memory._native import load_native_core
from inferno_memory.allocation import Allocation, new_owner_token, serial_counter
from inferno_memory.errors import (
    BackendUnavailableError,
    DoubleFreeError,
    ForeignAllocationError,
    MemoryConfigError,
    OutOfMemoryError,
)
from inferno_memory.host import check_request
from inferno_memory.observers import Observers
from inferno_memory.protocols import MemoryResource
from inferno_memory.sizes import ALIGNMENT, Size, align_up, format_size, parse_size
from inferno_memory.stats import MemoryStats

__all__ = ["DEFAULT_SLAB_SIZE", "NATIVE_ENV", "BlockInfo", "CoreChoice", "PoolMemoryResource"]

_log = logging.getLogger(__name__)

_MASK = ALIGNMENT - 1

DEFAULT_SLAB_SIZE = 1 << 20
"""Slab size when neither ``slab_size`` nor ``initial_size`` says otherwise (1 MiB)."""

NATIVE_ENV = "INFERNO_MEMORY_NATIVE"
"""Set to ``0`` to make ``core="auto"`` pools use the pure-Python core."""

CoreChoice = Literal["auto", "native", "python"]
"""Which bookkeeping core a pool uses: ``"native"`` (C, compiled on first use), ``"python"``
(the pure-Python reference) or ``"auto"`` (native when it builds, else Python)."""

_OFF = frozenset({"0", "false", "no", "off"})
_noted: set[str] = set()


def _select_core(choice: str) -> tuple[PoolCoreFactory, str]:
    """The factory and name of the core for ``choice``; logs a fallback once per reason."""
    if choice not in ("auto", "native", "python"):
        raise MemoryConfigError(
            f"must be 'auto', 'native' or 'python', got {choice!r}", field="core"
        )
    if choice == "python":
        return PythonPoolCore, "python"
    switch = os.environ.get(NATIVE_ENV, "").strip()
    if choice == "auto" and switch.lower() in _OFF:
        reason = f"{NATIVE_ENV}={switch}"
    else:
        native = load_native_core()
        if native.module is not None:
            factory: PoolCoreFactory = native.module.PoolCore
            return factory, "native"
        if choice == "native":
            raise BackendUnavailableError(
                f"the native pool core is unavailable: {native.reason} "
                f"(core='auto' falls back to the Python core)"
            )
        reason = native.reason
    if reason not in _noted:
        _noted.add(reason)
        _log.info("PoolMemoryResource uses the pure-Python core: %s", reason)
    return PythonPoolCore, "python"


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
    * ``core`` picks the bookkeeping: ``"native"`` is a C extension compiled on first use
      (cached per machine), ``"python"`` the pure-Python reference; both behave identically.
      ``"auto"`` (the default) takes the native core unless it cannot be built or the
      environment sets ``INFERNO_MEMORY_NATIVE=0``; ``"native"`` raises
      `BackendUnavailableError` with the reason when it cannot be built.
    """

    def __init__(
        self,
        upstream: MemoryResource,
        initial_size: Size = 0,
        maximum_size: Size | None = None,
        *,
        slab_size: Size | None = None,
        core: CoreChoice = "auto",
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
        factory, self._core_name = _select_core(core)
        self._upstream = upstream
        self._maximum = maximum
        self._slab_size = slab
        self._token = new_owner_token()
        # A finalizer that frees into this pool in the middle of one of its own sections is
        # queued rather than deadlocking (see `ResourceLock`). The two hot paths take the
        # raw lock through bound methods: about half the cost of a ``with`` block.
        self._lock = ResourceLock()
        self._acquire, self._release = self._lock.raw()
        self._pending = self._lock.pending
        self._slabs: dict[int, Allocation] = {}  # base address -> upstream allocation
        self._core: PoolCore = factory(self._token, Allocation, serial_counter())
        # Bound once: allocate and deallocate are hot enough that an attribute lookup shows.
        self._take = self._core.allocate
        self._give = self._core.deallocate
        self._reserved = 0
        self._observers = Observers()
        if initial:
            with self._lock:
                self._add_slab(initial, requested=0)

    # -- MemoryResource -------------------------------------------------------------------

    def allocate(self, nbytes: int) -> Allocation:
        """Best-fit ``nbytes`` from the free blocks, growing by a slab when none fits."""
        if type(nbytes) is not int or nbytes < 0:  # exact-int fast path; validate the rest
            nbytes = check_request(nbytes)
        if not self._acquire(False):
            self._lock.wait()  # raises rather than hang a finalizer inside this pool
        try:
            allocation = self._take(nbytes)
            if allocation is None:
                allocation = self._allocate_after_growing(nbytes)
        finally:
            self._release()
        if self._pending:
            self._lock.run_pending()
        if self._observers.callbacks:
            self._observers.notify()
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        """Free ``allocation`` and merge it with free neighbours in its slab."""
        if not self._acquire(False):
            if self._lock.defer_if_busy(self, allocation):
                return  # a finalizer during a collection: freed when the lock is released
            self._lock.wait()
        try:
            refused = self._give(allocation)
        finally:
            self._release()
        if self._pending:
            self._lock.run_pending()
        if refused:
            if refused == FOREIGN:
                raise ForeignAllocationError(f"{allocation!r} was not made by this pool")
            raise DoubleFreeError(f"{allocation!r} was already freed by this pool")
        if self._observers.callbacks:
            self._observers.notify()

    # -- pool management ------------------------------------------------------------------

    def release(self) -> int:
        """Hand every wholly free slab back upstream; returns the bytes released."""
        released = 0
        with self._lock:
            for base, slab in list(self._slabs.items()):
                if self._core.release_slab(base):
                    del self._slabs[base]
                    self._upstream.deallocate(slab)
                    self._reserved -= slab.size
                    released += slab.size
        return released

    def stats(self) -> MemoryStats:
        """Requested bytes and counts, ``reserved_bytes`` held upstream, ``maximum_size``."""
        with self._lock:
            return self._snapshot()

    def reset_peak(self) -> None:
        """Make the peak statistics equal the current ones."""
        with self._lock:
            self._core.reset_peak()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after every allocate/deallocate; returns the unsubscribe function."""
        return self._observers.subscribe(callback)

    @property
    def core(self) -> str:
        """The bookkeeping core in use: ``"native"`` (C) or ``"python"``."""
        return self._core_name

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
            return self._core.used()

    @property
    def slab_count(self) -> int:
        """How many slabs the pool holds."""
        with self._lock:
            return len(self._slabs)

    @property
    def free_block_count(self) -> int:
        """How many free blocks there are (1 per slab when nothing is allocated)."""
        with self._lock:
            return self._core.free_count()

    @property
    def largest_free_block(self) -> int:
        """Size of the largest free block, 0 when none."""
        with self._lock:
            return self._core.largest_free()

    def blocks(self) -> list[BlockInfo]:
        """Every block in address order: a debugging view, O(n log n)."""
        with self._lock:
            rows = self._core.blocks()
        return [BlockInfo(addr, size, free, slab) for addr, size, free, slab in rows]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reserved={self._reserved}, used={self._core.used()}, "
            f"slabs={len(self._slabs)}, maximum={self._maximum}, core={self._core_name!r})"
        )

    # -- internals (the lock is held) -----------------------------------------------------

    def _allocate_after_growing(self, requested: int) -> Allocation:
        """Add a slab that can hold ``requested`` bytes, then place the request in it."""
        rounded = ((requested + _MASK) & ~_MASK) or ALIGNMENT
        self._grow(rounded, requested)
        # No free block held the request before, so best fit now picks the new slab's block.
        allocation = self._take(requested)
        if allocation is None:  # only a request beyond what any block can describe
            raise self._out_of_memory(requested, "the request is too large for a pool block")
        return allocation

    def _grow(self, rounded: int, requested: int) -> None:
        """Add a slab that can hold ``rounded`` bytes."""
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
            self._add_slab(size, requested)
            return
        except OutOfMemoryError:
            if size == rounded:
                raise
        # The upstream could not give a full slab: settle for exactly what is needed.
        self._add_slab(rounded, requested)

    def _add_slab(self, size: int, requested: int) -> None:
        try:
            slab = self._upstream.allocate(size)
        except OutOfMemoryError as exc:
            raise self._out_of_memory(
                requested, f"upstream refused a slab of {format_size(size)} ({exc})"
            ) from exc
        try:
            self._core.add_slab(slab.ptr, size, slab.device)
        except BaseException:
            self._upstream.deallocate(slab)
            raise
        self._slabs[slab.ptr] = slab
        self._reserved += size

    def _snapshot(self) -> MemoryStats:
        cb, pb, tb, cc, pc, tc = self._core.counters()
        return MemoryStats(
            current_bytes=cb,
            peak_bytes=pb,
            total_bytes=tb,
            current_count=cc,
            peak_count=pc,
            total_count=tc,
            limit_bytes=self._maximum,
            reserved_bytes=self._reserved,
        )

    def _out_of_memory(self, requested: int, reason: str) -> OutOfMemoryError:
        stats = self._snapshot()
        return OutOfMemoryError(
            f"pool cannot allocate {format_size(requested)}: {reason}; {stats.describe()}, "
            f"largest free block {format_size(self._core.largest_free())}, "
            f"{self._core.free_count()} free blocks",
            requested=requested,
            stats=stats,
        )
