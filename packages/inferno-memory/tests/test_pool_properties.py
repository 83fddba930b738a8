"""Property tests: random interleavings of allocate/deallocate through a pool."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_memory import (
    Allocation,
    HostMemoryResource,
    OutOfMemoryError,
    PoolMemoryResource,
    StatisticsAdaptor,
)
from inferno_memory.pool import CoreChoice
from inferno_memory.testing import check_disjoint as assert_disjoint
from inferno_memory.testing import check_pool_layout as assert_pool_consistent

# An op is ("alloc", size) or ("free", index into the live list, modulo its length).
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(min_value=0, max_value=5000)),
        st.tuples(st.just("free"), st.integers(min_value=0, max_value=10_000)),
    ),
    max_size=120,
)


@settings(max_examples=120, deadline=None)
@given(
    ops=ops,
    initial=st.sampled_from([0, 2048, 8192]),
    slab=st.sampled_from([256, 4096, 16384]),
    maximum=st.sampled_from([None, 65536]),
)
def test_random_interleavings_keep_the_pool_sound(
    ops: list[tuple[str, int]], initial: int, slab: int, maximum: int | None, core: CoreChoice
) -> None:
    pool = PoolMemoryResource(HostMemoryResource(), initial, maximum, slab_size=slab, core=core)
    assert pool.core == core
    stats = StatisticsAdaptor(pool)
    live: list[Allocation] = []
    for op, arg in ops:
        if op == "alloc":
            try:
                live.append(stats.allocate(arg))
            except OutOfMemoryError:
                assert maximum is not None
        elif live:
            stats.deallocate(live.pop(arg % len(live)))
        assert_disjoint(live)
        s = stats.stats()
        assert s.current_bytes == sum(a.size for a in live)
        assert s.current_count == len(live)
        assert pool.stats().current_bytes == s.current_bytes
        if maximum is not None:
            assert pool.reserved_bytes <= maximum
    assert_pool_consistent(pool, live)
    for a in live:
        stats.deallocate(a)
    assert_pool_consistent(pool, [])
    assert pool.free_block_count == pool.slab_count
    assert stats.stats().current_bytes == 0
    pool.release()
    assert pool.reserved_bytes == 0
