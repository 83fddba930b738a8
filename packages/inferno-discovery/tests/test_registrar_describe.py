"""Registrar in the described form: the whole registration rebuilt on every publish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from inferno_discovery import (
    LoadSignals,
    Registrar,
    ServiceInfo,
    ServiceRegistration,
)
from inferno_discovery.testing import RecordingDiscovery

REG = ServiceRegistration(id="w1", service="llm", address="http://w1:8000", models=("m",))


def serving(*models: str) -> ServiceRegistration:
    return ServiceRegistration(id="w1", service="llm", address="http://w1:8000", models=models)


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def let_others_run() -> None:
    # Enough loop turns for a task that is not blocked to reach the registry.
    for _ in range(10):
        await asyncio.sleep(0)


class GatedDiscovery(RecordingDiscovery):
    """Holds the next ``register``/``update`` at a gate until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_next = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def _gate(self) -> None:
        if self.hold_next:
            self.hold_next = False
            self.held.set()
            await self.release.wait()

    async def register(self, registration: ServiceRegistration, ttl: float) -> None:
        await self._gate()
        await super().register(registration, ttl)

    async def update(self, registration: ServiceRegistration) -> None:
        await self._gate()
        await super().update(registration)


async def test_describe_is_called_on_every_publish() -> None:
    recording = RecordingDiscovery()
    models = ["a"]
    registered: list[ServiceInfo] = []
    registrar = Registrar(
        recording,
        describe=lambda: serving(*models),
        ttl=30,
        interval=60,
        on_registered=[registered.append],
    )
    assert registrar.registration is None
    await registrar.start()
    assert [c.args for c in recording.calls_to("register")] == [(serving("a"), 30)]
    assert registered == [serving("a")]
    models.append("b")
    await registrar.refresh()
    assert recording.calls_to("update")[-1].args == (serving("a", "b"),)
    assert registrar.registration == serving("a", "b")
    assert await recording.list("llm") == [serving("a", "b")]
    assert registered == [serving("a")]  # told once, not on every publish
    await registrar.stop()
    assert await recording.list("llm") == []


async def test_failing_describe_keeps_the_last_registration() -> None:
    recording = RecordingDiscovery()
    described = [REG]

    def describe() -> ServiceRegistration:
        if not described:
            raise RuntimeError("status unavailable")
        return described.pop()

    registrar = Registrar(recording, describe=describe, ttl=3.0, interval=60.0)
    await registrar.start()
    await registrar.refresh()
    assert [c.method for c in recording.calls] == ["register", "update"]
    assert recording.registered == [REG, REG]
    assert registrar.registration == REG
    await registrar.stop()


async def test_describe_failing_from_the_start_publishes_nothing_until_it_works() -> None:
    recording = RecordingDiscovery()
    ready = False

    def describe() -> ServiceRegistration:
        if not ready:
            raise RuntimeError("not listening yet")
        return REG

    registrar = Registrar(recording, describe=describe, ttl=3.0, interval=60.0)
    await registrar.start()  # does not raise
    assert recording.calls == []
    assert registrar.registration is None
    ready = True
    await registrar.refresh()
    assert registrar.registered
    assert recording.registered == [REG]
    await registrar.stop()


async def test_registry_down_at_start_is_retried_each_interval() -> None:
    recording = RecordingDiscovery()
    recording.unavailable = True
    registrar = Registrar(recording, describe=lambda: REG, ttl=3.0, interval=0.01)
    await registrar.start()
    assert not registrar.registered
    recording.unavailable = False
    await until(lambda: registrar.registered)
    assert await recording.list("llm") == [REG]
    assert len(recording.calls_to("register")) >= 2
    await registrar.stop()
    assert await recording.list("llm") == []


async def test_a_publish_that_began_before_a_change_never_lands_after_it() -> None:
    gated = GatedDiscovery()
    models = ["a"]
    registrar = Registrar(gated, describe=lambda: serving(*models), ttl=30, interval=60)
    await registrar.start()
    gated.hold_next = True
    stale = asyncio.create_task(registrar.refresh())  # described ("a",), held at the registry
    await gated.held.wait()
    models.append("b")  # e.g. an admin loaded a model, and refreshes
    fresh = asyncio.create_task(registrar.refresh())
    await let_others_run()
    gated.release.set()
    await asyncio.gather(stale, fresh)
    assert [r.models for r in gated.registered] == [("a",), ("a",), ("a", "b")]
    assert await gated.list("llm") == [serving("a", "b")]
    await registrar.stop()


async def test_stop_waits_for_a_publish_in_flight_then_deregisters() -> None:
    gated = GatedDiscovery()
    gone: list[ServiceInfo] = []
    registrar = Registrar(
        gated, describe=lambda: REG, ttl=30, interval=60, on_deregistered=[gone.append]
    )
    await registrar.start()
    gated.hold_next = True
    publishing = asyncio.create_task(registrar.refresh())
    await gated.held.wait()
    stopping = asyncio.create_task(registrar.stop())
    await let_others_run()
    assert gated.calls_to("deregister") == []  # not while the update is in flight
    gated.release.set()
    await asyncio.gather(publishing, stopping)
    assert [c.method for c in gated.calls if c.method != "list"] == [
        "register",
        "update",
        "deregister",
    ]
    assert gone == [REG]
    assert await gated.list("llm") == []


def test_exactly_one_form_and_valid_timing() -> None:
    def describe() -> ServiceRegistration:
        raise AssertionError("never called")

    recording = RecordingDiscovery()
    with pytest.raises(ValueError, match="not both"):
        Registrar(recording, REG, describe=describe)
    with pytest.raises(ValueError, match="needs a `registration`"):
        Registrar(recording)
    with pytest.raises(ValueError, match="`load` only applies"):
        Registrar(recording, describe=describe, load=LoadSignals)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        Registrar(recording, describe=describe, ttl=0)
    with pytest.raises(ValueError, match="interval must be > 0"):
        Registrar(recording, describe=describe, ttl=1, interval=-1)
    assert Registrar(recording, describe=describe, ttl=6).interval == pytest.approx(2.0)
