"""Finalizers that a garbage collection runs inside a resource's own critical section: their
frees are queued and run when the section ends, and their allocations fail with
`ResourceBusyError`, instead of deadlocking."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest
from inferno_memory import (
    Allocation,
    CoreChoice,
    HostMemoryResource,
    LimitingAdaptor,
    MemoryResource,
    PoolMemoryResource,
    ResourceBusyError,
    StatisticsAdaptor,
    TrackingAdaptor,
)
from inferno_memory import _lock as lock_module
from inferno_memory._lock import ResourceLock

# A thread that has not finished by then is stuck for good: a deadlock, not a slow machine.
_DEADLOCK_S = 30.0


def _finishes(work: Callable[[], None]) -> None:
    """Run ``work`` on a daemon thread and fail (rather than hang the suite) if it sticks."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(_DEADLOCK_S)
    assert not thread.is_alive(), "deadlocked: a finalizer waited for a lock its thread holds"
    if errors:
        raise errors[0]


def _cyclic_garbage_freeing(resource: MemoryResource, allocation: Allocation) -> None:
    """Leave garbage that only a collection reclaims, whose finalizer frees ``allocation``
    into ``resource``: what a collected tensor of `TorchAllocator` does."""
    holder = _Cycle()
    holder.me = holder
    weakref.finalize(holder, resource.deallocate, allocation)


class _Cycle:
    me: _Cycle | None = None


class _CollectingUpstream:
    """Host memory whose allocate runs a full collection first.

    A pool asks its upstream for slabs while holding its own lock, so this runs finalizers
    inside the pool's critical section, every time, without depending on gc thresholds.
    """

    def __init__(self) -> None:
        self.inner = HostMemoryResource()
        self.collections = 0

    def allocate(self, nbytes: int) -> Allocation:
        self.collections += 1
        gc.collect()
        return self.inner.allocate(nbytes)

    def deallocate(self, allocation: Allocation) -> None:
        self.inner.deallocate(allocation)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only the collections a test runs itself, so the finalizer fires where it means to."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finalizer_inside_the_pools_section_frees_once_the_section_ends(
    core: CoreChoice,
) -> None:
    upstream = _CollectingUpstream()
    pool = PoolMemoryResource(upstream, "4KiB", slab_size="4KiB", core=core)
    doomed = pool.allocate(1024)
    _cyclic_garbage_freeing(pool, doomed)

    def grow() -> None:
        # 8 KiB does not fit the first slab: the pool grows, under its lock, and the
        # upstream's collection runs the finalizer right there.
        big = pool.allocate(8192)
        assert upstream.collections == 2
        # The queued free ran as the allocate released the lock.
        assert pool.stats().current_count == 1
        pool.deallocate(big)

    _finishes(grow)
    stats = pool.stats()
    assert (stats.current_count, stats.current_bytes) == (0, 0)
    assert pool.free_block_count == pool.slab_count
    assert not pool._lock.pending


@pytest.mark.usefixtures("no_automatic_gc")
def test_every_adaptor_in_a_chain_survives_a_finalizer_in_the_pools_section(
    core: CoreChoice,
) -> None:
    upstream = _CollectingUpstream()
    pool = PoolMemoryResource(upstream, "4KiB", slab_size="4KiB", core=core)
    tracking = TrackingAdaptor(pool)
    limiting = LimitingAdaptor(tracking, "1MiB")
    stats = StatisticsAdaptor(limiting)
    doomed = stats.allocate(1024)
    _cyclic_garbage_freeing(stats, doomed)

    def grow() -> None:
        stats.deallocate(stats.allocate(8192))

    _finishes(grow)
    assert stats.stats().current_bytes == 0
    assert limiting.allocated_bytes == 0
    assert tracking.outstanding() == []
    assert pool.stats().current_count == 0


def test_frees_from_collections_at_every_allocation_never_deadlock_or_leak(
    core: CoreChoice,
) -> None:
    # Collect as often as CPython allows, so collections land inside every critical
    # section of the chain: the pool's, each adaptor's and the host resource's.
    pool = PoolMemoryResource(HostMemoryResource(), "64KiB", slab_size="64KiB", core=core)
    top = StatisticsAdaptor(LimitingAdaptor(TrackingAdaptor(pool), "64MiB"))
    live: list[Allocation] = []

    def churn() -> None:
        thresholds = gc.get_threshold()
        gc.set_threshold(1, 1, 1)
        try:
            for i in range(3000):
                _cyclic_garbage_freeing(top, top.allocate(64 + (i * 97) % 3000))
                live.append(top.allocate(256))
                if len(live) > 40:
                    top.deallocate(live.pop(0))
        finally:
            gc.set_threshold(*thresholds)

    _finishes(churn)
    gc.collect()
    assert top.stats().current_count == len(live)
    assert pool.stats().current_count == len(live)
    for allocation in live:
        top.deallocate(allocation)
    assert top.stats().current_bytes == 0
    assert pool.stats().current_count == 0
    assert pool.free_block_count == pool.slab_count


def test_collected_torch_tensors_free_into_the_pool_without_deadlock(core: CoreChoice) -> None:
    import torch
    from inferno_memory import TorchAllocator

    pool = PoolMemoryResource(HostMemoryResource(), "1MiB", core=core)
    tensors = TorchAllocator(pool)

    def churn() -> None:
        thresholds = gc.get_threshold()
        gc.set_threshold(1, 1, 1)
        try:
            for i in range(2000):
                cycle = _Cycle()
                cycle.me = cycle
                cycle.tensor = tensors.zeros(16 + i % 64, dtype=torch.float32)  # type: ignore[attr-defined]
                del cycle
                pool.deallocate(pool.allocate(512))
        finally:
            gc.set_threshold(*thresholds)

    _finishes(churn)
    gc.collect()
    assert tensors.live_tensors == 0
    assert pool.stats().current_count == 0
    assert pool.free_block_count == pool.slab_count


class _Recorder:
    def __init__(self) -> None:
        self.freed: list[tuple[Allocation, int]] = []

    def deallocate(self, allocation: Allocation) -> None:
        self.freed.append((allocation, threading.get_ident()))


def _as_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the calling thread look like one running a garbage collection (the tests that
    call this disable automatic collections, whose end would reset the mark)."""
    monkeypatch.setattr(lock_module, "_collecting", threading.get_ident())


def _block() -> Allocation:
    return HostMemoryResource().allocate(16)


def test_outside_a_collection_nothing_is_deferred() -> None:
    lock, recorder = ResourceLock(), _Recorder()
    with lock:
        assert not lock.defer_if_busy(recorder, _block())
    assert recorder.freed == []


@pytest.mark.usefixtures("no_automatic_gc")
def test_during_a_collection_a_free_lock_is_taken_not_deferred(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _as_collector(monkeypatch)
    lock, recorder = ResourceLock(), _Recorder()
    assert not lock.defer_if_busy(recorder, _block())
    assert recorder.freed == []


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_free_deferred_by_the_holder_runs_when_it_releases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock, recorder, block = ResourceLock(), _Recorder(), _block()
    with lock:
        _as_collector(monkeypatch)
        assert lock.defer_if_busy(recorder, block)
        assert recorder.freed == []
    assert recorder.freed == [(block, threading.get_ident())]
    assert not lock.pending


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_free_deferred_while_another_thread_holds_the_lock_runs_on_that_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock, recorder, block = ResourceLock(), _Recorder(), _block()
    holding, may_release = threading.Event(), threading.Event()
    holder_ident: list[int] = []

    def hold() -> None:
        holder_ident.append(threading.get_ident())
        with lock:
            holding.set()
            may_release.wait(_DEADLOCK_S)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(_DEADLOCK_S)
    _as_collector(monkeypatch)
    # A collector never waits on another thread's section either.
    assert lock.defer_if_busy(recorder, block)
    may_release.set()
    thread.join(_DEADLOCK_S)
    assert recorder.freed == [(block, holder_ident[0])]


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_deferred_free_that_fails_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    host = HostMemoryResource()
    block = host.allocate(16)
    host.deallocate(block)
    lock = ResourceLock()
    with caplog.at_level(logging.ERROR, logger="inferno_memory._lock"), lock:
        _as_collector(monkeypatch)
        assert lock.defer_if_busy(host, block)  # a double free, found when it runs
    assert "postponed deallocate" in caplog.text
    assert "DoubleFreeError" in caplog.text


@pytest.mark.usefixtures("no_automatic_gc")
def test_thousands_of_queued_frees_drain_in_a_loop_not_a_recursion(
    core: CoreChoice, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Each queued free releases the pool's lock again; were each release to start its own
    # run of the queue, 3000 of them would nest past the recursion limit.
    pool = PoolMemoryResource(HostMemoryResource(), "1MiB", core=core)
    blocks = [pool.allocate(64) for _ in range(3000)]
    with caplog.at_level(logging.ERROR, logger="inferno_memory._lock"):
        with pool._lock:
            _as_collector(monkeypatch)
            for block in blocks:
                pool.deallocate(block)
            assert len(pool._lock.pending) == len(blocks)
        assert caplog.text == ""
    assert not pool._lock.pending
    assert pool.stats().current_count == 0
    assert pool.free_block_count == pool.slab_count


def _cyclic_garbage_allocating(resource: MemoryResource, seen: list[object]) -> None:
    """Garbage whose finalizer allocates from ``resource`` and records what it got: the
    allocation, or the exception."""
    holder = _Cycle()
    holder.me = holder

    def allocate() -> None:
        try:
            seen.append(resource.allocate(256))
        except Exception as exc:
            seen.append(exc)

    weakref.finalize(holder, allocate)


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finalizer_allocating_inside_the_pools_section_fails_instead_of_hanging(
    core: CoreChoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_module, "REENTRY_WAIT_S", 0.05)
    upstream = _CollectingUpstream()
    pool = PoolMemoryResource(upstream, "4KiB", slab_size="4KiB", core=core)
    seen: list[object] = []
    _cyclic_garbage_allocating(pool, seen)

    def grow() -> None:
        pool.deallocate(pool.allocate(8192))  # grows under the lock: the finalizer runs there

    _finishes(grow)
    assert len(seen) == 1
    assert isinstance(seen[0], ResourceBusyError)
    assert "finalizer" in str(seen[0])
    # The interrupted section finished cleanly, and the pool serves as before.
    assert pool.stats().current_count == 0
    pool.deallocate(pool.allocate(100))
    assert pool.free_block_count == pool.slab_count


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finalizer_allocating_from_an_adaptor_in_its_section_fails_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lock_module, "REENTRY_WAIT_S", 0.05)
    limiting = LimitingAdaptor(HostMemoryResource(), "1MiB")
    seen: list[object] = []
    _cyclic_garbage_allocating(limiting, seen)

    def collect_inside() -> None:
        with limiting._lock:  # the adaptor's own section, as its allocate holds it
            gc.collect()

    _finishes(collect_inside)
    assert len(seen) == 1
    assert isinstance(seen[0], ResourceBusyError)
    assert limiting.allocated_bytes == 0


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finalizer_allocating_while_another_thread_holds_the_lock_waits_for_it() -> None:
    # The holder is not the collecting thread: the finalizer waits, then gets its memory.
    pool = PoolMemoryResource(HostMemoryResource(), "64KiB")
    seen: list[object] = []
    _cyclic_garbage_allocating(pool, seen)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with pool._lock:
            held.set()
            release.wait(10)

    other = threading.Thread(target=holder, daemon=True)
    other.start()
    assert held.wait(10)
    threading.Timer(0.2, release.set).start()
    _finishes(gc.collect)  # type: ignore[arg-type]
    other.join(10)
    assert len(seen) == 1
    assert isinstance(seen[0], Allocation)
    pool.deallocate(seen[0])
    assert pool.stats().current_count == 0
