"""HealthChecker semantics: timeouts, errors, aggregation, probes, gate, change events."""

from __future__ import annotations

import asyncio
import json

import pytest
from inferno_health import (
    CallableProvider,
    HealthChange,
    HealthChecker,
    HealthProvider,
    HealthReport,
    HealthStatus,
    Probe,
)
from inferno_health.testing import FakeProvider

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def test_fake_provider_satisfies_protocol() -> None:
    assert isinstance(FakeProvider("x"), HealthProvider)


def test_status_ordering() -> None:
    assert HealthStatus.worst([H, D, H]) is D
    assert HealthStatus.worst([D, U]) is U
    assert HealthStatus.worst([]) is H


def test_rejects_duplicate_names_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="'a' is already registered"):
        HealthChecker([FakeProvider("a"), FakeProvider("a")])
    with pytest.raises(ValueError, match="timeout"):
        HealthChecker(timeout=0)
    with pytest.raises(ValueError, match="interval"):
        HealthChecker(interval=-1)


async def test_before_first_check_not_started_nor_ready() -> None:
    checker = HealthChecker([FakeProvider("a")])
    snap = checker.snapshot
    assert snap.checked_at is None
    assert not snap.started
    assert not snap.ready
    assert snap.live
    assert snap.probe("startup").failures[0].reason == "no check has completed yet"


async def test_aggregates_worst_status_and_names_failures() -> None:
    checker = HealthChecker(
        [FakeProvider("a"), FakeProvider("b", D, "slow"), FakeProvider("c", U, "broken")]
    )
    snap = await checker.check()
    assert snap.status is U
    assert set(snap.failing()) == {"b", "c"}
    assert snap.providers["c"].reason == "broken"
    doc = json.loads(snap.to_json())
    assert doc["status"] == "unhealthy"
    b = doc["providers"]["b"]
    assert (b["name"], b["status"], b["reason"], b["data"]) == ("b", "degraded", "slow", {})
    assert sorted(b["probes"]) == ["liveness", "readiness", "startup"]
    assert b["duration_s"] >= 0
    failures = doc["probes"]["liveness"]["failures"]
    assert failures == [{"source": "c", "status": "unhealthy", "reason": "broken"}]
    assert doc["probes"]["liveness"]["ok"] is False


async def test_degraded_is_still_live_and_ready() -> None:
    checker = HealthChecker([FakeProvider("a", D, "hot")])
    snap = await checker.check()
    assert snap.status is D
    assert snap.live
    assert snap.ready
    assert snap.started


async def test_hung_provider_times_out_and_others_still_report() -> None:
    hung = FakeProvider("hung")
    hung.hang = True
    checker = HealthChecker([hung, FakeProvider("ok")], timeout=0.05)
    snap = await checker.check()
    assert snap.providers["hung"].status is U
    assert snap.providers["hung"].reason == "timeout"
    assert snap.providers["ok"].status is H


async def test_provider_that_ignores_cancellation_does_not_hang_the_check() -> None:
    release = asyncio.Event()

    async def stubborn() -> bool:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows cancellation, like a badly written provider
        return True

    checker = HealthChecker([CallableProvider("stubborn", stubborn)], timeout=0.05)
    snap = await asyncio.wait_for(checker.check(), timeout=5)
    assert snap.providers["stubborn"].reason == "timeout"
    release.set()
    await asyncio.sleep(0)


async def test_raising_provider_is_unhealthy_with_exception_as_reason() -> None:
    bad = FakeProvider("bad")
    bad.error = RuntimeError("engine thread died")
    snap = await HealthChecker([bad]).check()
    assert snap.providers["bad"].status is U
    assert snap.providers["bad"].reason == "RuntimeError: engine thread died"
    assert snap.providers["bad"].data == {"exception": "RuntimeError"}


async def test_provider_returning_wrong_type_is_unhealthy() -> None:
    class Wrong:
        name = "wrong"
        probes = frozenset(Probe)

        async def check(self) -> object:
            return "fine"

    snap = await HealthChecker([Wrong()]).check()  # type: ignore[list-item]
    assert snap.providers["wrong"].status is U
    assert "expected HealthReport" in (snap.providers["wrong"].reason or "")


async def test_probe_kinds_follow_declared_probes() -> None:
    memory = FakeProvider("memory", U, "pool full", probes=[Probe.READINESS])
    engine = FakeProvider("engine", probes=[Probe.LIVENESS, Probe.STARTUP])
    snap = await HealthChecker([memory, engine]).check()
    assert snap.live  # memory pressure does not ask for a restart
    assert snap.started  # nor does it block startup
    assert not snap.ready
    assert [f.source for f in snap.probe(Probe.READINESS).failures] == ["memory"]


async def test_startup_passes_on_first_success_and_stays_passed() -> None:
    engine = FakeProvider("engine", U, "loading")
    checker = HealthChecker([engine])
    snap = await checker.check()
    assert not snap.started
    assert not snap.ready
    engine.set(H)
    assert (await checker.check()).started
    engine.set(U, "crashed")
    snap = await checker.check()
    assert snap.started  # startup is only about the first success
    assert not snap.live
    assert not snap.ready


async def test_readiness_gate_forces_not_ready_with_reason() -> None:
    events: list[HealthChange] = []
    checker = HealthChecker([FakeProvider("a")], on_change=[events.append])
    await checker.check()
    events.clear()
    snap = checker.set_ready(False, "draining")
    assert not snap.ready
    assert snap.live
    assert snap.status is H
    assert snap.probe("readiness").failures[0].source == "gate"
    assert snap.probe("readiness").failures[0].reason == "draining"
    assert json.loads(snap.to_json())["ready_gate_reason"] == "draining"
    assert len(events) == 1
    assert events[0].changed_probes == (Probe.READINESS,)
    assert not (await checker.check()).ready  # a check does not reopen the gate
    assert checker.set_ready(True).ready


async def test_change_events_fire_on_first_check_and_on_changes_only() -> None:
    events: list[HealthChange] = []
    a, b = FakeProvider("a"), FakeProvider("b")
    checker = HealthChecker([a, b], on_change=[events.append])
    await checker.check()
    assert len(events) == 1
    assert events[0].previous is None
    assert events[0].status_changed
    assert set(events[0].changed_providers) == {"a", "b"}
    await checker.check()
    assert len(events) == 1  # nothing changed
    b.set(D, "warm")
    await checker.check()
    assert len(events) == 2
    assert events[1].changed_providers == ("b",)
    assert events[1].current.status is D
    assert events[1].previous is not None
    assert events[1].previous.status is H
    assert events[1].changed_probes == ()
    a.set(U, "dead")
    await checker.check()
    assert events[2].changed_providers == ("a",)
    assert set(events[2].changed_probes) == {Probe.LIVENESS, Probe.READINESS}


async def test_failing_listener_does_not_break_others() -> None:
    seen: list[HealthStatus] = []

    def broken(change: HealthChange) -> None:
        raise RuntimeError("subscriber bug")

    checker = HealthChecker([FakeProvider("a")], on_change=[broken])
    checker.add_listener(lambda c: seen.append(c.current.status))
    snap = await checker.check()
    assert snap.status is H
    assert seen == [H]


async def test_concurrent_checks_share_one_round() -> None:
    provider = FakeProvider("a")
    checker = HealthChecker([provider])
    snaps = await asyncio.gather(*(checker.check() for _ in range(5)))
    assert provider.calls == 1
    assert all(s is snaps[0] for s in snaps)


async def test_periodic_checks_run_until_stopped() -> None:
    provider = FakeProvider("a")
    changes: list[HealthChange] = []
    checker = HealthChecker([provider], interval=0.01, on_change=[changes.append])
    async with checker:
        for _ in range(500):
            if provider.calls >= 3:
                break
            await asyncio.sleep(0.01)
    calls = provider.calls
    assert calls >= 3
    assert len(changes) == 1
    await asyncio.sleep(0.05)
    assert provider.calls == calls


async def test_callable_provider_accepts_sync_async_status_and_report() -> None:
    async def report() -> HealthReport:
        return HealthReport.degraded("queue long", {"queue": 9})

    checker = HealthChecker(
        [
            CallableProvider("bool", lambda: False, probes=[Probe.LIVENESS]),
            CallableProvider("status", lambda: D),
            CallableProvider("report", report),
            CallableProvider("junk", lambda: 3),  # type: ignore[arg-type,return-value]
        ]
    )
    snap = await checker.check()
    assert snap.providers["bool"].status is U
    assert snap.providers["bool"].reason == "bool check returned False"
    assert snap.providers["bool"].probes == frozenset({Probe.LIVENESS})
    assert snap.providers["status"].status is D
    assert snap.providers["report"].data == {"queue": 9}
    assert snap.providers["junk"].status is U
    assert "expected HealthReport, HealthStatus or bool" in (snap.providers["junk"].reason or "")
