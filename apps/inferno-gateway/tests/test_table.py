"""The worker table: discovery events in, candidates out; readiness flags and cool-downs."""

from __future__ import annotations

import asyncio

from inferno_discovery import (
    DiscoveryEvent,
    DiscoveryEventKind,
    InMemoryDiscovery,
    InMemoryRegistry,
    LoadSignals,
    ServiceRegistration,
)
from inferno_gateway import WorkerTable, follow_registry, registration_ready


def _reg(worker_id: str, *models: str, **metadata: str) -> ServiceRegistration:
    return ServiceRegistration(
        id=worker_id,
        service="inferno",
        address=f"http://{worker_id}:8000/",
        models=models or ("default",),
        metadata=metadata,
    )


def _event(kind: DiscoveryEventKind, reg: ServiceRegistration) -> DiscoveryEvent:
    return DiscoveryEvent(kind, reg.service, reg.id, reg)


def test_events_add_update_and_remove_workers() -> None:
    changes: list[int] = []
    table = WorkerTable(on_change=[lambda t: changes.append(len(t))])
    table.apply(_event(DiscoveryEventKind.ADDED, _reg("a", "m1")))
    table.apply(_event(DiscoveryEventKind.ADDED, _reg("b", "m1", "m2")))
    worker = table.get("a")
    assert worker is not None
    assert worker.address == "http://a:8000"  # trailing slash dropped: routes are appended
    worker.in_flight = 2
    loaded = _reg("a", "m1").with_load(LoadSignals(queue_depth=3))
    table.apply(_event(DiscoveryEventKind.UPDATED, loaded))
    assert table.get("a") is worker
    assert (worker.in_flight, worker.load.queue_depth) == (2, 3)  # our counter survives
    table.apply(_event(DiscoveryEventKind.REMOVED, _reg("b")))
    assert [w.id for w in table.workers] == ["a"]
    assert changes == [1, 2, 2, 1]


def test_models_union_and_candidates_per_model() -> None:
    table = WorkerTable()
    table.upsert(_reg("a", "m1"))
    table.upsert(_reg("b", "m1", "m2"))
    table.upsert(_reg("c", "m3", ready="false"))
    assert list(table.models()) == ["m1", "m2"]  # c is not ready
    assert table.serves("m3")
    assert [w.id for w in table.candidates("m1")] == ["a", "b"]
    assert [w.id for w in table.candidates("m1", exclude=["a"])] == ["b"]
    assert table.candidates("m3") == []


def test_registration_readiness_flags() -> None:
    assert registration_ready(_reg("a"))
    assert registration_ready(_reg("a", status="SERVING", ready="true"))
    assert not registration_ready(_reg("a", ready="0"))
    assert not registration_ready(_reg("a", status="draining"))
    assert not registration_ready(_reg("a", state="starting"))


def test_unreachable_workers_are_avoided_while_others_remain() -> None:
    now = [100.0]
    table = WorkerTable(clock=lambda: now[0])
    table.upsert(_reg("a"))
    table.upsert(_reg("b"))
    table.mark_unreachable("a", 5.0)
    assert [w.id for w in table.candidates("default")] == ["b"]
    assert [w.id for w in table.candidates("default", exclude=["b"])] == ["a"]  # last resort
    now[0] += 5.0
    assert [w.id for w in table.candidates("default")] == ["a", "b"]


async def test_follow_registry_tracks_a_real_watch() -> None:
    registry = InMemoryRegistry()
    worker_side, router_side = InMemoryDiscovery(registry), InMemoryDiscovery(registry)
    await worker_side.register(_reg("a"), ttl=10)
    table = WorkerTable()
    task = asyncio.create_task(follow_registry(router_side, "inferno", table))
    try:
        for _ in range(200):
            if len(table) == 1:
                break
            await asyncio.sleep(0.01)
        assert [w.id for w in table.workers] == ["a"]
        await worker_side.register(_reg("b"), ttl=10)
        await worker_side.deregister("a")
        for _ in range(200):
            if [w.id for w in table.workers] == ["b"]:
                break
            await asyncio.sleep(0.01)
        assert [w.id for w in table.workers] == ["b"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker_side.close()
        await router_side.close()


async def test_follow_registry_restarts_a_closed_watch_and_prunes() -> None:
    registry = InMemoryRegistry()
    table = WorkerTable()
    table.upsert(_reg("stale"))
    router = InMemoryDiscovery(registry)
    await router.close()  # every call now raises DiscoveryClosedError: the loop must retry
    task = asyncio.create_task(follow_registry(router, "inferno", table, retry_interval=0.01))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    fresh = InMemoryDiscovery(registry)
    task = asyncio.create_task(follow_registry(fresh, "inferno", table))
    for _ in range(200):
        if len(table) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(table) == 0  # the registry has no "stale": the restart dropped it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await fresh.close()
