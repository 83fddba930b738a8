from __future__ import annotations

import pytest
from inferno_memory import (
    DoubleFreeError,
    ForeignAllocationError,
    HostMemoryResource,
    LimitExceededError,
    LimitingAdaptor,
    MemoryResource,
    OutOfMemoryError,
    PoolMemoryResource,
    StatisticsAdaptor,
    TrackingAdaptor,
)


def test_limiting_adaptor_refuses_past_the_limit_without_touching_upstream() -> None:
    upstream = StatisticsAdaptor(HostMemoryResource())
    mr = LimitingAdaptor(upstream, "1KiB")
    assert isinstance(mr, MemoryResource)
    a = mr.allocate(1000)
    with pytest.raises(LimitExceededError) as info:
        mr.allocate(100)
    assert isinstance(info.value, OutOfMemoryError)
    assert info.value.requested == 100
    assert "limit of 1.00 KiB" in str(info.value)
    assert upstream.stats().current_count == 1
    mr.deallocate(a)
    assert mr.allocated_bytes == 0
    mr.deallocate(mr.allocate(1024))
    assert mr.limit_bytes == 1024


def test_limiting_adaptor_rolls_back_when_upstream_fails() -> None:
    pool = PoolMemoryResource(HostMemoryResource(), 0, "2KiB")
    mr = LimitingAdaptor(pool, "1MiB")
    with pytest.raises(OutOfMemoryError):
        mr.allocate(4096)
    assert mr.allocated_bytes == 0


def test_limiting_adaptor_leaves_accounting_alone_on_a_bad_free() -> None:
    mr = LimitingAdaptor(HostMemoryResource(), 4096)
    a = mr.allocate(100)
    mr.deallocate(a)
    with pytest.raises(DoubleFreeError):
        mr.deallocate(a)
    assert mr.allocated_bytes == 0


def test_statistics_adaptor_counts_current_peak_total_and_resets_peak() -> None:
    mr = StatisticsAdaptor(HostMemoryResource())
    a, b, c = mr.allocate(10), mr.allocate(20), mr.allocate(30)
    mr.deallocate(b)
    s = mr.stats()
    assert (s.current_bytes, s.peak_bytes, s.total_bytes) == (40, 60, 60)
    assert (s.current_count, s.peak_count, s.total_count) == (2, 3, 3)
    assert s.limit_bytes is None
    assert s.utilization is None
    mr.reset_peak()
    s = mr.stats()
    assert (s.peak_bytes, s.peak_count) == (40, 2)
    mr.deallocate(a)
    mr.deallocate(c)
    assert mr.stats().current_bytes == 0
    assert mr.stats().total_count == 3


def test_statistics_adaptor_reports_the_upstream_limit() -> None:
    mr = StatisticsAdaptor(LimitingAdaptor(HostMemoryResource(), 1000))
    mr.allocate(250)
    assert mr.stats().limit_bytes == 1000
    assert mr.stats().utilization == 0.25
    assert StatisticsAdaptor(HostMemoryResource(), limit="2KiB").stats().limit_bytes == 2048


def test_statistics_adaptor_does_not_count_failed_calls() -> None:
    mr = StatisticsAdaptor(HostMemoryResource())
    with pytest.raises(ForeignAllocationError):
        mr.deallocate(HostMemoryResource().allocate(8))
    with pytest.raises(ValueError, match="nbytes"):
        mr.allocate(-3)
    s = mr.stats()
    assert (s.current_count, s.total_count) == (0, 0)


def test_statistics_adaptor_isolates_failing_observers() -> None:
    mr = StatisticsAdaptor(HostMemoryResource())
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("observer bug")

    mr.subscribe(broken)
    unsubscribe = mr.subscribe(lambda: calls.append(mr.stats().current_count))
    a = mr.allocate(8)
    mr.deallocate(a)
    unsubscribe()
    mr.allocate(8)
    assert calls == [1, 0]


def test_tracking_adaptor_reports_outstanding_allocations_by_tag() -> None:
    mr = TrackingAdaptor(HostMemoryResource(), capture_stacks=True)
    kv = [mr.allocate(4096, tag="kv-cache") for _ in range(3)]
    scratch = mr.allocate(100)
    assert len(mr.outstanding()) == 4
    assert [t.allocation for t in mr.outstanding("kv-cache")] == sorted(kv, key=lambda a: a.ptr)
    assert mr.outstanding_bytes == 3 * 4096 + 100
    report = mr.leak_report()
    assert "4 allocations outstanding" in report
    assert "kv-cache: 3 allocations, 12.00 KiB" in report
    assert "<untagged>: 1 allocations, 100 B" in report
    assert "test_tracking_adaptor_reports_outstanding" in report  # the captured stack
    for a in kv:
        mr.deallocate(a)
    mr.deallocate(scratch)
    assert mr.leak_report() == ""
    assert mr.outstanding() == []


def test_tracking_adaptor_passes_errors_through() -> None:
    mr = TrackingAdaptor(HostMemoryResource())
    a = mr.allocate(16, tag="x")
    mr.deallocate(a)
    with pytest.raises(DoubleFreeError):
        mr.deallocate(a)
    with pytest.raises(ForeignAllocationError):
        mr.deallocate(HostMemoryResource().allocate(8))
    assert mr.outstanding() == []


def test_adaptors_compose_in_any_order() -> None:
    host = HostMemoryResource()
    tracked = TrackingAdaptor(host)
    pool = PoolMemoryResource(tracked, "64KiB")
    stats = StatisticsAdaptor(LimitingAdaptor(pool, "16KiB"))
    blocks = [stats.allocate(1000) for _ in range(16)]
    with pytest.raises(LimitExceededError):
        stats.allocate(1000)
    assert stats.stats().current_bytes == 16_000
    # The pool took exactly one slab from upstream, which the tracker sees.
    assert len(tracked.outstanding()) == 1
    for b in blocks:
        stats.deallocate(b)
    pool.release()
    assert tracked.leak_report() == ""
