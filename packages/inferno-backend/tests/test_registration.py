"""Discovery registration: the lease TTL setting, and the models list following load/unload."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from inferno_backend.api import build_app
from inferno_backend.commands import serve as serve_command
from inferno_backend.composition import Daemon, build_daemon, describe_registration
from inferno_backend.config import ConfigError, ServeConfig, load_config
from inferno_backend.orchestrator import Orchestrator
from inferno_backend.registration import RegistrationHandle
from inferno_backend.testing import FakeModelSource, fake_orchestrator
from inferno_discovery import DiscoveryEvent, DiscoveryEventKind, Registrar, ServiceRegistration
from inferno_discovery.testing import RecordingDiscovery

ADMIN = {"Authorization": "Bearer adm"}


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def test_discovery_ttl_default_env_and_bounds() -> None:
    assert load_config(env={}).discovery_ttl == 10.0
    assert load_config(env={"INFERNO_DISCOVERY_TTL": "3"}).discovery_ttl == 3.0
    with pytest.raises(ConfigError, match=r"discovery_ttl \(from INFERNO_DISCOVERY_TTL\)"):
        load_config(env={"INFERNO_DISCOVERY_TTL": "0.2"})
    with pytest.raises(ConfigError, match=r"discovery_ttl \(from command line\)"):
        load_config(env={}, overrides={"discovery_ttl": 7200})


def test_discovery_ttl_flag_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeConfig] = []

    async def fake_serve(config: ServeConfig) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(serve_command, "serve", fake_serve)
    monkeypatch.setattr(serve_command, "configure_logging", lambda *_: None)
    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--discovery-ttl", "4.5"])
    assert serve_command.run(args) == 0
    assert seen[0].discovery_ttl == 4.5


def test_build_daemon_leases_for_the_configured_ttl() -> None:
    daemon = build_daemon(ServeConfig(discovery_ttl=6, warmup=False))
    assert daemon.registrar is not None
    assert daemon.registrar.ttl == 6.0
    assert daemon.registrar.interval == pytest.approx(2.0)


class Served:
    """An app over fakes whose registration goes to a `RecordingDiscovery` through the real
    `Registrar` (described form) and `describe_registration`, wired as the composition root
    does."""

    def __init__(self, config: ServeConfig, discovery: RecordingDiscovery) -> None:
        self.config = config
        self.discovery = discovery
        holder: list[Daemon] = []
        self.registrar = Registrar(
            discovery,
            describe=lambda: describe_registration(holder[0], config),
            ttl=config.discovery_ttl,
        )
        handle = RegistrationHandle(
            self.registrar.start, self.registrar.stop, "w1", refresh=self.registrar.refresh
        )
        self.orchestrator: Orchestrator = fake_orchestrator(
            config, source=FakeModelSource(["default", "other"]), registration=handle
        )
        self.daemon = Daemon(self.orchestrator, build_app(self.orchestrator), self.registrar)
        self.daemon.service_id = "w1"
        self.daemon.advertised_url = "http://10.0.0.7:8000"
        holder.append(self.daemon)

    async def listed(self) -> list[ServiceRegistration]:
        return await self.discovery.upstream.list(self.config.service_name)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, TestClient[Any, Any]]]:
    config = ServeConfig(warmup=False, admin_key="adm", discovery_ttl=5)
    s = Served(config, RecordingDiscovery())
    client: TestClient[Any, Any] = TestClient(TestServer(s.daemon.app))
    await client.start_server()
    yield s, client
    await client.close()
    await s.discovery.close()


async def test_registers_with_the_ttl_and_models_after_ready(
    served: tuple[Served, TestClient[Any, Any]],
) -> None:
    s, _ = served
    (call,) = s.discovery.calls_to("register")
    registration, ttl = call.args
    assert ttl == 5.0
    assert registration.id == "w1"
    assert registration.address == "http://10.0.0.7:8000"
    assert registration.models == ("default",)
    assert registration.load.free_slots == 16  # FakeEngine's max_num_seqs
    assert [r.models for r in await s.listed()] == [("default",)]


async def test_admin_load_and_unload_refresh_the_models(
    served: tuple[Served, TestClient[Any, Any]],
) -> None:
    s, client = served
    events: list[DiscoveryEvent] = []
    watch = s.discovery.upstream.watch("inferno")

    async def follow() -> None:
        async for event in watch:
            events.append(event)

    follower = asyncio.create_task(follow())
    resp = await client.post("/v1/admin/models/load", json={"model": "other"}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert [r.models for r in await s.listed()] == [("default", "other")]
    resp = await client.post("/v1/admin/models/unload", json={"model": "other"}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert [r.models for r in await s.listed()] == [("default",)]
    updates = [r.models for r in s.discovery.registered]
    assert updates == [("default",), ("default", "other"), ("default",)]
    await _until(lambda: len(events) >= 3)
    follower.cancel()
    assert [(e.kind, e.info.models if e.info else None) for e in events] == [
        (DiscoveryEventKind.ADDED, ("default",)),
        (DiscoveryEventKind.UPDATED, ("default", "other")),
        (DiscoveryEventKind.UPDATED, ("default",)),
    ]


async def test_unloading_model_leaves_the_registration_before_it_drains() -> None:
    config = ServeConfig(warmup=False, admin_key="adm")
    s = Served(config, RecordingDiscovery())
    await s.orchestrator.start()
    await s.orchestrator.load_model("other")
    async with s.orchestrator.admit("other"):
        unloading = asyncio.create_task(s.orchestrator.unload_model("other"))
        await _until(lambda: s.discovery.registered[-1].models == ("default",))
        assert not unloading.done()  # still draining the request held above
    assert await unloading == 0
    await s.orchestrator.stop()
    assert s.discovery.calls_to("deregister")[0].args == ("w1",)
    assert await s.listed() == []
    await s.discovery.close()


async def test_refresh_failure_is_logged_not_raised() -> None:
    orch = fake_orchestrator(
        registration=RegistrationHandle(lambda: None, lambda: None, "w4", refresh=_boom),
        source=FakeModelSource(["default", "other"]),
    )
    await orch.start()
    served = await orch.load_model("other")  # the failing refresh must not fail the load
    assert served.name == "other"
    await orch.stop()


def _boom() -> None:
    raise RuntimeError("registry exploded")
