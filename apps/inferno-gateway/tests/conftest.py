"""Fixtures: a gateway over an in-memory registry, and fake workers that register in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from inferno_discovery import InMemoryDiscovery, InMemoryRegistry
from inferno_gateway import Gateway, GatewayConfig, RoutingPolicy, build_app, build_policy
from inferno_gateway.testing import FakeWorker


class Cluster:
    """A started gateway and the fake workers registered behind it."""

    def __init__(self, gateway: Gateway, registry: InMemoryRegistry, url: str) -> None:
        self.gateway = gateway
        self.registry = registry
        self.url = url
        self.workers: dict[str, FakeWorker] = {}
        self._clients: list[InMemoryDiscovery] = []

    async def add_worker(
        self, worker_id: str, *, ttl: float = 10.0, wait: bool = True, **kwargs: Any
    ) -> FakeWorker:
        """Start a fake worker, register it, and (by default) wait until the gateway sees it."""
        worker = await FakeWorker(worker_id, **kwargs).start()
        client = InMemoryDiscovery(self.registry)
        self._clients.append(client)
        await worker.register(client, ttl)
        self.workers[worker_id] = worker
        if wait:
            await self.wait_for(lambda: self.gateway.table.get(worker_id) is not None)
        return worker

    async def wait_for(self, condition: Callable[[], bool], within_s: float = 5.0) -> None:
        """Poll ``condition`` until it holds; fail after ``within_s`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not condition():
            if loop.time() > deadline:
                pytest.fail(f"condition not met within {within_s} s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for client in self._clients:
            await client.close(revoke=False)
        for worker in self.workers.values():
            await worker.stop()


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster() -> AsyncIterator[ClusterFactory]:
    """Build gateways (with any policy and config overrides) over fresh in-memory registries."""
    runners: list[web.AppRunner] = []
    clusters: list[Cluster] = []

    async def factory(policy: RoutingPolicy | None = None, **overrides: Any) -> Cluster:
        registry = InMemoryRegistry()
        config = GatewayConfig(**{"unreachable_cooldown_s": 30.0, **overrides})
        chosen = policy if policy is not None else build_policy(config.policy)
        gateway = Gateway(config, InMemoryDiscovery(registry), chosen, owns_discovery=True)
        runner = web.AppRunner(build_app(gateway), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        runners.append(runner)
        cluster = Cluster(gateway, registry, f"http://{host}:{port}")
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        await cluster.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session
