"""The DiscoveryProvider contract, run against InMemoryDiscovery and a real etcd alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from inferno_discovery import (
    DiscoveryClosedError,
    DiscoveryEvent,
    DiscoveryEventKind,
    DiscoveryProvider,
    EtcdDiscovery,
    InMemoryDiscovery,
    InMemoryRegistry,
    LoadSignals,
    ServiceRegistration,
    UnknownRegistrationError,
)

from tests.integration.etcd_server import EtcdServer

ADDED, UPDATED, REMOVED = DiscoveryEventKind


@dataclass
class Backend:
    """Makes clients that share one registry, and closes them after the test."""

    name: str
    ttl: float
    factory: Callable[[], InMemoryDiscovery | EtcdDiscovery]
    clients: list[InMemoryDiscovery | EtcdDiscovery] = field(default_factory=list)

    def client(self) -> InMemoryDiscovery | EtcdDiscovery:
        made = self.factory()
        self.clients.append(made)
        return made


async def _backend(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if kind == "memory":
        registry = InMemoryRegistry()
        made = Backend("memory", 0.3, lambda: InMemoryDiscovery(registry))
    else:
        etcd: EtcdServer = request.getfixturevalue("etcd")
        prefix = f"/contract/{uuid.uuid4().hex}/"
        made = Backend(
            "etcd", 2.0, lambda: EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=0.2)
        )
    try:
        yield made
    finally:
        for client in made.clients:
            await client.close()


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Clients of one registry: in memory, or in a real etcd."""
    async for made in _backend(request.param, request):
        yield made


@pytest.fixture(
    params=["memory", pytest.param("etcd", marks=[pytest.mark.integration, pytest.mark.slow])]
)
async def ttl_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Like `backend`, for tests that wait out TTLs (seconds on etcd, whose minimum is 2 s)."""
    async for made in _backend(request.param, request):
        yield made


def reg(rid: str, service: str = "llm", **kwargs: Any) -> ServiceRegistration:
    return ServiceRegistration(id=rid, service=service, address=f"http://{rid}:8000", **kwargs)


async def next_event(stream: AsyncIterator[DiscoveryEvent]) -> DiscoveryEvent:
    return await asyncio.wait_for(anext(stream), timeout=10)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


async def test_satisfies_protocol(backend: Backend) -> None:
    assert isinstance(backend.client(), DiscoveryProvider)


async def test_register_list_update_deregister(backend: Backend) -> None:
    worker, router = backend.client(), backend.client()
    first = reg("w1", models=("smollm2",), version="0.1.0")
    await worker.register(first, ttl=backend.ttl)
    await worker.register(reg("w2"), ttl=backend.ttl)
    await worker.register(reg("other", service="embed"), ttl=backend.ttl)
    assert await router.list("llm") == [first, reg("w2")]
    assert [r.id for r in await router.list("embed")] == ["other"]
    assert await router.list("nothing") == []

    busy = first.with_load(LoadSignals(queue_depth=3, running_requests=8, kv_usage=0.5))
    await worker.update(busy)
    assert (await router.list("llm"))[0] == busy

    await worker.deregister("w1")
    assert [r.id for r in await router.list("llm")] == ["w2"]
    await worker.deregister("w1")  # unknown ids are ignored


async def test_misuse_raises_typed_errors(backend: Backend) -> None:
    worker = backend.client()
    await worker.register(reg("w1"), ttl=backend.ttl)
    with pytest.raises(ValueError, match="already registered"):
        await worker.register(reg("w1"), ttl=backend.ttl)
    with pytest.raises(UnknownRegistrationError, match="'ghost' is not registered here"):
        await worker.update(reg("ghost"))
    with pytest.raises(ValueError, match="registered for service 'llm'"):
        await worker.update(reg("w1", service="embed"))
    with pytest.raises(ValueError, match="ttl"):
        await worker.register(reg("w9"), ttl=0)


async def test_watch_replays_live_instances_then_streams_changes(backend: Backend) -> None:
    worker, router = backend.client(), backend.client()
    await worker.register(reg("w1"), ttl=backend.ttl)
    stream = aiter(router.watch("llm"))
    assert await next_event(stream) == DiscoveryEvent(ADDED, "llm", "w1", reg("w1"))

    await worker.register(reg("w2"), ttl=backend.ttl)
    await worker.register(reg("x", service="embed"), ttl=backend.ttl)  # another service: unseen
    loaded = reg("w1").with_load(LoadSignals(free_slots=4))
    await worker.update(loaded)
    await worker.deregister("w2")
    assert [await next_event(stream) for _ in range(3)] == [
        DiscoveryEvent(ADDED, "llm", "w2", reg("w2")),
        DiscoveryEvent(UPDATED, "llm", "w1", loaded),
        DiscoveryEvent(REMOVED, "llm", "w2", reg("w2")),
    ]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_keepalive_holds_registration_past_its_ttl(ttl_backend: Backend) -> None:
    worker, router = ttl_backend.client(), ttl_backend.client()
    await worker.register(reg("w1"), ttl=ttl_backend.ttl)
    await asyncio.sleep(ttl_backend.ttl * 1.6)
    assert [r.id for r in await router.list("llm")] == ["w1"]


async def test_dead_worker_expires_with_its_lease(ttl_backend: Backend) -> None:
    worker, router = ttl_backend.client(), ttl_backend.client()
    stream = aiter(router.watch("llm"))
    await worker.register(reg("w1"), ttl=ttl_backend.ttl)
    assert (await next_event(stream)).kind is ADDED
    await worker.close(revoke=False)  # stops keeping the lease alive, like a crash
    assert [r.id for r in await router.list("llm")] == ["w1"]  # not removed eagerly

    removed = await asyncio.wait_for(anext(stream), timeout=ttl_backend.ttl + 5)
    assert removed == DiscoveryEvent(REMOVED, "llm", "w1", reg("w1"))
    assert await router.list("llm") == []
    await stream.aclose()  # type: ignore[attr-defined]


async def test_close_revokes_and_ends_watches(backend: Backend) -> None:
    worker, router = backend.client(), backend.client()
    await worker.register(reg("w1"), ttl=backend.ttl)
    await worker.close()
    assert await eventually(lambda: _empty(router), within=5)

    stream = aiter(router.watch("llm"))
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    await router.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, timeout=5)
    with pytest.raises(DiscoveryClosedError):
        await router.list("llm")
    with pytest.raises(DiscoveryClosedError):
        await router.register(reg("w3"), ttl=backend.ttl)


async def _empty(router: InMemoryDiscovery | EtcdDiscovery) -> bool:
    return await router.list("llm") == []
