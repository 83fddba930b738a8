"""Registrar behaviour, driven through the recording provider."""

from __future__ import annotations

import asyncio

import pytest
from inferno_discovery import LoadSignals, Registrar, ServiceInfo, ServiceRegistration
from inferno_discovery.testing import RecordingDiscovery

REG = ServiceRegistration(id="w1", service="llm", address="http://w1:8000", models=("m",))


class Load:
    """Load signals that change on every call, and can be made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> LoadSignals:
        if self.fail:
            raise RuntimeError("stats unavailable")
        self.calls += 1
        return LoadSignals(queue_depth=self.calls, free_slots=10 - self.calls)


async def test_registers_with_fresh_load_and_refreshes_it() -> None:
    recording, load = RecordingDiscovery(), Load()
    registered: list[ServiceInfo] = []
    registrar = Registrar(recording, REG, ttl=30, load=load, on_registered=[registered.append])
    await registrar.start()
    assert registrar.registered
    assert [c.args for c in recording.calls_to("register")] == [(REG.with_load(load_at(1)), 30)]
    assert registered == [REG.with_load(load_at(1))]

    await registrar.refresh()
    assert recording.calls_to("update")[-1].args == (REG.with_load(load_at(2)),)
    assert await recording.list("llm") == [REG.with_load(load_at(2))]
    await registrar.stop()


def load_at(n: int) -> LoadSignals:
    return LoadSignals(queue_depth=n, free_slots=10 - n)


async def test_background_refresh_runs_every_interval() -> None:
    recording, load = RecordingDiscovery(), Load()
    async with Registrar(recording, REG, ttl=30, load=load, interval=0.01):
        for _ in range(500):
            if len(recording.calls_to("update")) >= 3:
                break
            await asyncio.sleep(0.01)
    updates = [c.args[0].load.queue_depth for c in recording.calls_to("update")]
    assert len(updates) >= 3
    assert updates == sorted(updates)
    assert updates[0] == 2  # first refresh after the registration's own sample
    assert recording.calls_to("deregister")[0].args == ("w1",)


def is_registered(registrar: Registrar) -> bool:
    # A call, so that the type checker does not narrow the property across awaits.
    return registrar.registered


async def test_unreachable_registry_is_retried_not_raised() -> None:
    recording = RecordingDiscovery()
    recording.unavailable = True
    registered: list[ServiceInfo] = []
    registrar = Registrar(recording, REG, ttl=30, on_registered=[registered.append])
    await registrar.start()  # does not raise
    assert not is_registered(registrar)
    await registrar.refresh()
    assert len(recording.calls_to("register")) == 2
    assert registered == []
    recording.unavailable = False
    await registrar.refresh()
    assert is_registered(registrar)
    assert registered == [REG]
    recording.unavailable = True
    await registrar.refresh()  # an update failing is logged, not raised
    assert is_registered(registrar)
    await registrar.stop()


async def test_stop_deregisters_and_notifies() -> None:
    recording = RecordingDiscovery()
    gone: list[ServiceInfo] = []
    registrar = Registrar(recording, REG, ttl=30, on_deregistered=[gone.append])
    await registrar.start()
    await registrar.stop()
    assert not registrar.registered
    assert gone == [REG]
    assert await recording.list("llm") == []
    await registrar.stop()  # idempotent
    assert gone == [REG]


async def test_failing_load_keeps_last_signals_and_failing_listener_is_ignored() -> None:
    recording, load = RecordingDiscovery(), Load()

    def broken(info: ServiceInfo) -> None:
        raise RuntimeError("listener bug")

    registrar = Registrar(recording, REG, ttl=30, load=load, on_registered=[broken])
    await registrar.start()
    assert registrar.registered
    load.fail = True
    await registrar.refresh()
    assert recording.calls_to("update")[-1].args == (REG.with_load(load_at(1)),)
    await registrar.stop()


def test_validates_timing() -> None:
    with pytest.raises(ValueError, match="ttl"):
        Registrar(RecordingDiscovery(), REG, ttl=0)
    with pytest.raises(ValueError, match="interval"):
        Registrar(RecordingDiscovery(), REG, interval=0)
    assert Registrar(RecordingDiscovery(), REG, ttl=9).interval == 3
