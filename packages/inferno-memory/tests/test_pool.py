from __future__ import annotations

import threading

import numpy as np
import pytest
from inferno_memory import (
    Allocation,
    DoubleFreeError,
    ForeignAllocationError,
    HostMemoryResource,
    LimitingAdaptor,
    MemoryConfigError,
    MemoryResource,
    OutOfMemoryError,
    PoolMemoryResource,
    StatisticsAdaptor,
)
from inferno_memory.pool import CoreChoice
from inferno_memory.testing import check_pool_layout as assert_pool_consistent

# Every test runs once per bookkeeping core: the `core` fixture (conftest.py) is "python" or
# "native".


def make_pool(
    core: CoreChoice,
    initial: int | str = "64KiB",
    maximum: int | str | None = None,
    slab: int | str | None = None,
) -> tuple[PoolMemoryResource, StatisticsAdaptor]:
    upstream = StatisticsAdaptor(HostMemoryResource())
    pool = PoolMemoryResource(upstream, initial, maximum, slab_size=slab, core=core)
    assert pool.core == core
    return pool, upstream


def test_pool_is_a_resource_and_reserves_initial_size(core: CoreChoice) -> None:
    pool, upstream = make_pool(core, "64KiB")
    assert isinstance(pool, MemoryResource)
    assert pool.reserved_bytes == 64 * 1024
    assert upstream.stats().current_count == 1
    assert pool.free_block_count == 1


def test_best_fit_picks_the_smallest_block_that_fits(core: CoreChoice) -> None:
    pool, _ = make_pool(core, "64KiB")
    a, b, c, d, e = (pool.allocate(n) for n in (1024, 256, 512, 256, 2048))
    pool.deallocate(a)  # 1 KiB hole
    pool.deallocate(c)  # 512 B hole
    got = pool.allocate(300)  # rounds to 512: the 512 hole fits best
    assert got.ptr == c.ptr
    assert got.size == 300
    got2 = pool.allocate(700)  # 768: only the 1 KiB hole (or the tail) fits; best is 1 KiB
    assert got2.ptr == a.ptr
    assert_pool_consistent(pool, [b, d, e, got, got2])


def test_split_and_coalesce_restore_one_block_per_slab(core: CoreChoice) -> None:
    pool, _ = make_pool(core, "16KiB")
    blocks = [pool.allocate(1000) for _ in range(10)]
    assert pool.used_bytes == 10 * 1024
    for blk in blocks[::2] + blocks[1::2]:
        pool.deallocate(blk)
    assert pool.free_block_count == 1
    assert pool.largest_free_block == 16 * 1024
    assert_pool_consistent(pool, [])


def test_grows_in_slabs_and_release_returns_free_slabs(core: CoreChoice) -> None:
    pool, upstream = make_pool(core, 0, slab="4KiB")
    assert pool.reserved_bytes == 0
    a = pool.allocate(3000)
    b = pool.allocate(3000)  # does not fit the rest of the first slab
    big = pool.allocate(10_000)  # larger than a slab: gets its own slab of exactly that
    assert pool.slab_count == 3
    assert pool.reserved_bytes == 4096 + 4096 + 10_240
    assert upstream.stats().current_bytes == pool.reserved_bytes
    pool.deallocate(b)
    pool.deallocate(big)
    assert pool.release() == 4096 + 10_240
    assert pool.slab_count == 1
    assert upstream.stats().current_count == 1
    pool.deallocate(a)
    assert pool.release() == 4096
    assert pool.reserved_bytes == 0
    assert upstream.stats().current_bytes == 0


def test_adjacent_slabs_are_never_merged(core: CoreChoice) -> None:
    pool, _ = make_pool(core, 0, slab="1KiB")
    blocks = [pool.allocate(1024) for _ in range(8)]
    for blk in blocks:
        pool.deallocate(blk)
    # Upstream addresses may happen to be contiguous; each slab must stay its own block.
    assert pool.free_block_count == pool.slab_count == 8
    assert pool.release() == 8 * 1024


def test_over_maximum_raises_with_request_and_statistics(core: CoreChoice) -> None:
    pool, _ = make_pool(core, "4KiB", maximum="8KiB")
    pool.allocate(4096)
    with pytest.raises(OutOfMemoryError) as info:
        pool.allocate(8192)
    err = info.value
    assert err.requested == 8192
    assert err.stats is not None
    assert err.stats.current_bytes == 4096
    assert err.stats.limit_bytes == 8192
    assert "8.00 KiB" in str(err)
    assert "maximum_size" in str(err)
    assert "reserved 4.00 KiB" in str(err)
    # The last 4 KiB still fit: growth is clamped to the maximum.
    pool.allocate(4096)
    assert pool.reserved_bytes == 8192


def test_upstream_refusal_falls_back_to_an_exact_slab_then_raises(core: CoreChoice) -> None:
    upstream = LimitingAdaptor(HostMemoryResource(), "6KiB")
    pool = PoolMemoryResource(upstream, 0, slab_size="4KiB", core=core)
    pool.allocate(4096)
    # A 4 KiB slab would exceed the upstream limit; an exact 1 KiB slab does not.
    pool.allocate(1024)
    assert pool.reserved_bytes == 5 * 1024
    with pytest.raises(OutOfMemoryError, match="upstream refused"):
        pool.allocate(2048)


def test_double_free_and_foreign_allocation(core: CoreChoice) -> None:
    pool, _ = make_pool(core)
    other, _ = make_pool(core)
    a = pool.allocate(100)
    with pytest.raises(ForeignAllocationError):
        other.deallocate(a)
    with pytest.raises(ForeignAllocationError):
        pool.deallocate(HostMemoryResource().allocate(100))
    pool.deallocate(a)
    with pytest.raises(DoubleFreeError):
        pool.deallocate(a)
    # Same address handed out again: the stale allocation still cannot free it.
    b = pool.allocate(100)
    assert b.ptr == a.ptr
    with pytest.raises(DoubleFreeError):
        pool.deallocate(a)
    pool.deallocate(b)


def test_statistics_count_requested_bytes_and_reset_peak(core: CoreChoice) -> None:
    pool, _ = make_pool(core)
    a = pool.allocate(100)
    b = pool.allocate(300)
    pool.deallocate(a)
    s = pool.stats()
    assert (s.current_bytes, s.peak_bytes, s.total_bytes) == (300, 400, 400)
    assert (s.current_count, s.peak_count, s.total_count) == (1, 2, 2)
    pool.reset_peak()
    assert pool.stats().peak_bytes == 300
    pool.deallocate(b)


def test_zero_byte_requests_get_distinct_blocks(core: CoreChoice) -> None:
    pool, _ = make_pool(core)
    a, b = pool.allocate(0), pool.allocate(0)
    assert a.ptr != b.ptr
    assert a.size == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_size": "8KiB", "maximum_size": "4KiB"}, "initial_size"),
        ({"initial_size": "lots"}, "initial_size"),
        ({"maximum_size": -1}, "maximum_size"),
        ({"slab_size": 0}, "slab_size"),
    ],
)
def test_config_is_validated(kwargs: dict[str, object], field: str, core: CoreChoice) -> None:
    with pytest.raises(ValueError, match=field):
        PoolMemoryResource(HostMemoryResource(), core=core, **kwargs)  # type: ignore[arg-type]


def test_bad_request_size_is_refused(core: CoreChoice) -> None:
    pool, _ = make_pool(core)
    with pytest.raises(ValueError, match="nbytes"):
        pool.allocate(-1)
    assert isinstance(MemoryConfigError("x", field="f"), ValueError)


def test_pool_memory_is_usable_as_numpy(core: CoreChoice) -> None:
    pool, _ = make_pool(core)
    a, b = pool.allocate(4000), pool.allocate(4000)
    a.as_numpy(np.int32)[:] = 7
    b.as_numpy(np.int32)[:] = 9
    assert int(a.as_numpy(np.int32).sum()) == 7 * 1000
    assert int(b.as_numpy(np.int32).sum()) == 9 * 1000


def test_threads_allocating_and_freeing_concurrently(core: CoreChoice) -> None:
    pool, _ = make_pool(core, "256KiB", slab="64KiB")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine: list[Allocation] = []
        try:
            barrier.wait()
            for _ in range(2000):
                if mine and rng.random() < 0.5:
                    blk = mine.pop(int(rng.integers(len(mine))))
                    # Each block holds its owner's seed: another thread's overlap would show.
                    assert int(blk.as_numpy(np.uint8)[0]) == seed
                    pool.deallocate(blk)
                else:
                    blk = pool.allocate(int(rng.integers(1, 5000)))
                    blk.as_numpy(np.uint8)[:] = seed
                    mine.append(blk)
                if rng.random() < 0.01:  # slabs go back upstream while others allocate
                    pool.release()
            for blk in mine:
                assert bool((blk.as_numpy(np.uint8) == seed).all())
                pool.deallocate(blk)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i + 1,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = pool.stats()
    assert s.current_bytes == 0
    assert s.current_count == 0
    assert s.total_count >= 8 * 1000
    assert pool.free_block_count == pool.slab_count
    assert_pool_consistent(pool, [])
    check = getattr(pool._core, "check", None)  # the native core's own invariant check
    if check is not None:
        check()
