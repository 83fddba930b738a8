"""Fixtures: an app over fakes, served by aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from inferno_backend.api import build_app
from inferno_backend.config import ServeConfig
from inferno_backend.orchestrator import Orchestrator
from inferno_backend.testing import fake_orchestrator
from inferno_inference import GenerationRequest

MakeClient = Callable[..., Awaitable[tuple[TestClient[Any, Any], Orchestrator]]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Start an app over `fake_orchestrator(config, **options)` and return (client, orch)."""
    clients: list[TestClient[Any, Any]] = []

    async def make(
        config: ServeConfig | None = None, **options: Any
    ) -> tuple[TestClient[Any, Any], Orchestrator]:
        orchestrator = fake_orchestrator(config or ServeConfig(warmup=False), **options)
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(orchestrator), handler_cancellation=True)
        )
        await client.start_server()
        clients.append(client)
        return client, orchestrator

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    """A client of an app with default config and the default fake script."""
    c, _ = await make_client()
    return c


def scripted(answer: str) -> dict[str, Any]:
    """`make_client` options: every choice streams ``answer`` in pieces of 7 characters."""

    def script(request: GenerationRequest, index: int) -> list[str]:
        return [answer[i : i + 7] for i in range(0, len(answer), 7)]

    return {"engine_options": {"script": script}}
