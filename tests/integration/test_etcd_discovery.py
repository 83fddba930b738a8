"""EtcdDiscovery against a real etcd: crashes, etcd restarts, lost leases, late etcd."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from inferno_discovery import (
    DiscoveryEvent,
    DiscoveryEventKind,
    EtcdClient,
    EtcdDiscovery,
    LoadSignals,
    Registrar,
    ServiceInfo,
    ServiceRegistration,
    discovery_from_url,
)

from tests.integration.etcd_server import EtcdServer, require_etcd

pytestmark = pytest.mark.integration

ADDED, UPDATED, REMOVED = DiscoveryEventKind
TTL = 2  # etcd's minimum lease TTL with default timing


def reg(rid: str, **kwargs: object) -> ServiceRegistration:
    return ServiceRegistration(id=rid, service="llm", address=f"http://{rid}:8000", **kwargs)  # type: ignore[arg-type]


def unique_prefix() -> str:
    return f"/it/{uuid.uuid4().hex}/"


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


async def ids(discovery: EtcdDiscovery) -> list[str]:
    return [r.id for r in await discovery.list("llm")]


async def test_discovery_from_url_talks_to_etcd(etcd: EtcdServer) -> None:
    prefix = unique_prefix()
    discovery = discovery_from_url(f"{etcd.url}{prefix}")
    assert isinstance(discovery, EtcdDiscovery)
    assert discovery.prefix == prefix
    try:
        await discovery.register(reg("w1"), ttl=TTL)
        assert [r.id for r in await discovery.list("llm")] == ["w1"]
        kvs, _ = await discovery.client.range_prefix(prefix)
        assert [kv.key for kv in kvs] == [f"{prefix}llm/w1"]
        assert kvs[0].lease != 0  # attached to a lease
    finally:
        await discovery.close()


@pytest.mark.slow
async def test_killed_worker_disappears_within_its_ttl(etcd: EtcdServer, tmp_path: Path) -> None:
    prefix = unique_prefix()
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from inferno_discovery import EtcdDiscovery, ServiceRegistration

            async def main():
                d = EtcdDiscovery({etcd.endpoint!r}, prefix={prefix!r})
                r = ServiceRegistration(id="w1", service="llm", address="http://w1:8000")
                await d.register(r, ttl={TTL})
                print("registered", flush=True)
                await asyncio.sleep(3600)

            asyncio.run(main())
            """
        )
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE
    )
    router = EtcdDiscovery(etcd.endpoint, prefix=prefix)
    try:
        assert worker.stdout is not None
        stdout = worker.stdout

        async def wait_registered() -> None:
            # structlog also writes to stdout: skip its lines until the script's own marker.
            while (line := await stdout.readline()) and line.strip() != b"registered":
                pass

        await asyncio.wait_for(wait_registered(), timeout=30)
        await asyncio.sleep(TTL * 1.5)  # its keep-alive holds it past one TTL
        assert await ids(router) == ["w1"]
        worker.kill()
        await worker.wait()
        killed_at = time.monotonic()
        assert await eventually(lambda: _gone(router), within=TTL + 3)
        # etcd checks lease expiry every 500 ms; allow that on top of the TTL.
        assert time.monotonic() - killed_at <= TTL + 1.5
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await router.close()


async def _gone(router: EtcdDiscovery) -> bool:
    return await ids(router) == []


async def _collect(stream: AsyncIterator[DiscoveryEvent], into: list[DiscoveryEvent]) -> None:
    async for event in stream:
        into.append(event)


@pytest.mark.slow
async def test_etcd_restart_keeps_registration_and_watch_misses_nothing(tmp_path: Path) -> None:
    prefix = unique_prefix()
    with EtcdServer(tmp_path / "etcd", binary=require_etcd()) as etcd:
        worker = EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=0.2)
        other = EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=0.2)
        # A slow-retrying router: it reconnects only after the changes below have happened, so
        # it has to replay them from its last revision.
        router = EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=3.0)
        events: list[DiscoveryEvent] = []
        collector = asyncio.ensure_future(_collect(router.watch("llm"), events))
        try:
            await worker.register(reg("w1"), ttl=TTL)
            busy = reg("w1", load=LoadSignals(queue_depth=1))
            await worker.update(busy)
            assert await eventually(lambda: _count(events, 2), within=10)

            etcd.stop()
            draining = reg("w1", load=LoadSignals(queue_depth=7))
            await worker.update(draining)  # etcd is down: kept, not raised
            await asyncio.sleep(0.5)
            etcd.start()
            restarted = time.monotonic()

            async def w1_is(expected: ServiceInfo) -> bool:
                try:
                    return await worker.list("llm") == [expected]
                except Exception:
                    return False

            assert await eventually(lambda: w1_is(draining), within=2 * TTL)
            assert time.monotonic() - restarted <= 2 * TTL
            await other.register(reg("w2"), ttl=TTL)
            await other.deregister("w2")

            assert await eventually(lambda: _count(events, 5), within=15)
            await asyncio.sleep(1.0)  # let any duplicate arrive before comparing
            assert events == [
                DiscoveryEvent(ADDED, "llm", "w1", reg("w1")),
                DiscoveryEvent(UPDATED, "llm", "w1", busy),
                DiscoveryEvent(UPDATED, "llm", "w1", draining),
                DiscoveryEvent(ADDED, "llm", "w2", reg("w2")),
                DiscoveryEvent(REMOVED, "llm", "w2", reg("w2")),
            ]
        finally:
            for discovery in (worker, other, router):
                await discovery.close()
            await asyncio.wait_for(collector, timeout=5)


async def _count(events: list[DiscoveryEvent], n: int) -> bool:
    return len(events) >= n


@pytest.mark.slow
async def test_revoked_lease_is_granted_again(etcd: EtcdServer) -> None:
    prefix = unique_prefix()
    worker = EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=0.2)
    admin = EtcdClient(etcd.endpoint)
    try:
        await worker.register(reg("w1"), ttl=TTL)
        kvs, _ = await admin.range_prefix(prefix)
        await admin.revoke(kvs[0].lease)  # an operator (or a long partition) drops the lease
        kvs, _ = await admin.range_prefix(prefix)
        assert kvs == []
        assert await eventually(lambda: _registered(worker), within=TTL)
        kvs, _ = await admin.range_prefix(prefix)
        assert [kv.key for kv in kvs] == [f"{prefix}llm/w1"]
    finally:
        await worker.close()
        await admin.close()


async def _registered(worker: EtcdDiscovery) -> bool:
    return await ids(worker) == ["w1"]


@pytest.mark.slow
async def test_registrar_waits_for_a_late_etcd_and_publishes_fresh_load(tmp_path: Path) -> None:
    etcd = EtcdServer(tmp_path / "etcd", binary=require_etcd())  # not started yet
    prefix = unique_prefix()
    discovery = EtcdDiscovery(etcd.endpoint, prefix=prefix, retry_interval=0.2)
    ticks = 0

    def load() -> LoadSignals:
        nonlocal ticks
        ticks += 1
        return LoadSignals(running_requests=ticks)

    registered: list[ServiceInfo] = []
    registrar = Registrar(
        discovery, reg("w1"), ttl=TTL, load=load, on_registered=[registered.append]
    )
    try:
        await registrar.start()  # etcd is down: logged, not raised
        assert not registrar.registered
        etcd.start()
        assert await eventually(lambda: _truthy(registrar.registered), within=TTL * 2)
        assert len(registered) == 1

        async def load_advanced() -> bool:
            found = await discovery.list("llm")
            return (
                bool(found) and found[0].load.running_requests > registered[0].load.running_requests
            )

        assert await eventually(load_advanced, within=TTL * 2)
        await registrar.stop()
        assert await discovery.list("llm") == []
    finally:
        await registrar.stop()
        await discovery.close()
        etcd.stop()


async def _truthy(value: bool) -> bool:
    return value
