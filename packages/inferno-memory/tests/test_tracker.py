from __future__ import annotations

import logging

import pytest
from inferno_memory import (
    HostMemoryResource,
    MemoryConfigError,
    MemoryStats,
    MemoryTracker,
    PoolMemoryResource,
    StatisticsAdaptor,
)


def make(
    budget: int = 1000, **kwargs: object
) -> tuple[StatisticsAdaptor, MemoryTracker, list[tuple[int, int]]]:
    stats = StatisticsAdaptor(HostMemoryResource())
    seen: list[tuple[int, int]] = []
    tracker = MemoryTracker(stats, budget=budget, **kwargs)  # type: ignore[arg-type]
    tracker.add_listener(lambda s: seen.append((s.current_bytes, tracker.level)))
    return stats, tracker, seen


def test_listeners_hear_crossings_up_and_down_once_each() -> None:
    mr, tracker, seen = make()
    a = mr.allocate(500)
    assert seen == []
    b = mr.allocate(300)  # 80%
    assert seen == [(800, 1)]
    c = mr.allocate(100)  # 90%: no new threshold
    d = mr.allocate(50)  # 95%
    assert seen == [(800, 1), (950, 2)]
    mr.deallocate(d)  # back to 90%: below 95
    mr.deallocate(c)  # 80%: still at level 1
    mr.deallocate(b)  # 50%
    assert seen == [(800, 1), (950, 2), (900, 1), (500, 0)]
    assert tracker.level == 0
    mr.deallocate(a)


def test_jumping_past_several_thresholds_notifies_once() -> None:
    mr, _tracker, seen = make()
    a = mr.allocate(990)
    assert seen == [(990, 2)]
    mr.deallocate(a)
    assert seen == [(990, 2), (0, 0)]


def test_snapshot_carries_the_budget_as_limit() -> None:
    mr = StatisticsAdaptor(HostMemoryResource())
    got: list[MemoryStats] = []
    MemoryTracker(mr, budget="1KiB", thresholds=[0.5], on_alert=got.append)
    mr.allocate(600)
    assert len(got) == 1
    assert got[0].limit_bytes == 1024
    assert got[0].utilization == pytest.approx(600 / 1024)


def test_hysteresis_suppresses_flapping() -> None:
    mr, _, seen = make(thresholds=[0.5], hysteresis=0.1)
    a = mr.allocate(500)
    b = mr.allocate(10)
    mr.deallocate(a)  # 1%: below 40%, falls
    c = mr.allocate(450)  # 46%: not back up
    d = mr.allocate(50)  # 51%: up
    mr.deallocate(b)  # 50%
    mr.deallocate(d)  # 45%: within hysteresis, stays up
    assert seen == [(500, 1), (10, 0), (510, 1)]
    mr.deallocate(c)
    assert seen[-1] == (0, 0)


def test_failing_listener_is_logged_and_never_breaks_allocation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mr, tracker, seen = make()

    def broken(_: MemoryStats) -> None:
        raise RuntimeError("listener bug")

    tracker.add_listener(broken)
    with caplog.at_level(logging.ERROR):
        a = mr.allocate(900)
    assert seen == [(900, 1)]  # the other listener still ran
    assert "listener" in caplog.text
    mr.deallocate(a)


def test_budget_defaults_to_the_source_limit_and_close_stops_following() -> None:
    pool = PoolMemoryResource(HostMemoryResource(), 0, "4KiB")
    got: list[MemoryStats] = []
    with MemoryTracker(pool, on_alert=got.append) as tracker:
        assert tracker.budget == 4096
        a = pool.allocate(3500)
        assert len(got) == 1
    pool.deallocate(a)  # closed: no automatic check
    assert len(got) == 1
    assert tracker.check().current_bytes == 0
    assert len(got) == 2


def test_polling_a_source_without_subscribe() -> None:
    class Fixed:
        def __init__(self) -> None:
            self.current = 0

        def stats(self) -> MemoryStats:
            return MemoryStats(current_bytes=self.current)

    src = Fixed()
    got: list[MemoryStats] = []
    tracker = MemoryTracker(src, budget=100, on_alert=got.append)
    src.current = 85
    assert got == []
    tracker.check()
    assert [s.current_bytes for s in got] == [85]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": "x"}, "budget"),
        ({"budget": 10, "thresholds": []}, "thresholds"),
        ({"budget": 10, "thresholds": [1.5]}, "thresholds"),
        ({"budget": 10, "thresholds": [0.5], "hysteresis": 0.6}, "hysteresis"),
        ({}, "budget"),
    ],
)
def test_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        MemoryTracker(StatisticsAdaptor(HostMemoryResource()), **kwargs)  # type: ignore[arg-type]
    if isinstance(info.value, MemoryConfigError):
        assert info.value.field == field
