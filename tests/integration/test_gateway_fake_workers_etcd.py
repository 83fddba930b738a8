"""inferno-gateway over a real etcd with fake workers: short leases, so the whole life of a
worker (register, take traffic, crash, expire, come back) fits in a few seconds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from inferno_discovery import EtcdDiscovery
from inferno_gateway import WORKER_HEADER, Gateway, GatewayConfig, build_app, build_policy
from inferno_gateway.testing import FakeWorker

from .etcd_server import EtcdServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL_S = 2.0


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in the shared etcd."""
    return f"/gateway-fake-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def gateway_url(etcd: EtcdServer, prefix: str) -> AsyncIterator[tuple[Gateway, str]]:
    config = GatewayConfig(discovery=f"{etcd.url}{prefix}", unreachable_cooldown_s=30)
    discovery = EtcdDiscovery(etcd.endpoint, prefix=prefix)
    gateway = Gateway(config, discovery, build_policy("least-load"), owns_discovery=True)
    runner = web.AppRunner(build_app(gateway), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield gateway, f"http://{host}:{port}"
    await runner.cleanup()


async def _until(condition: Callable[[], bool], within_s: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within_s, f"not within {within_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_crashed_worker_expires_and_a_new_one_takes_traffic(
    etcd: EtcdServer, prefix: str, gateway_url: tuple[Gateway, str]
) -> None:
    gateway, url = gateway_url
    workers = [await FakeWorker(name).start() for name in ("a", "b")]
    providers = [EtcdDiscovery(etcd.endpoint, prefix=prefix) for _ in workers]
    try:
        for worker, provider in zip(workers, providers, strict=True):
            await worker.register(provider, TTL_S)
        await _until(lambda: len(gateway.table.ready_workers) == 2, 5)
        body = {"model": "default", "prompt": "x", "stream": True}
        async with aiohttp.ClientSession() as http:

            async def ask() -> str:
                async with http.post(url + "/v1/completions", json=body) as resp:
                    assert resp.status == 200
                    assert (await resp.text()).endswith("data: [DONE]\n\n")
                    return resp.headers[WORKER_HEADER]

            assert {await ask() for _ in range(4)} == {"a", "b"}
            # "a" crashes: its sockets close and nobody revokes its lease.
            await workers[0].kill()
            await providers[0].close(revoke=False)
            assert {await ask() for _ in range(4)} == {"b"}  # retried, never failed
            gone = await _until(lambda: gateway.table.get("a") is None, TTL_S + 3)
            assert gone <= TTL_S + 3
            newcomer = await FakeWorker("c").start()
            workers.append(newcomer)
            providers.append(EtcdDiscovery(etcd.endpoint, prefix=prefix))
            await newcomer.register(providers[-1], TTL_S)
            await _until(lambda: gateway.table.get("c") is not None, 5)
            assert "c" in {await ask() for _ in range(4)}
    finally:
        for provider in providers:
            await provider.close()
        for worker in workers:
            await worker.stop()
