"""The etcd gateway client against a small fake gateway, and against nothing at all."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from inferno_discovery import (
    DiscoveryUnavailableError,
    EtcdClient,
    EtcdDiscovery,
    EtcdError,
    ServiceRegistration,
)
from inferno_discovery.etcd_client import prefix_range_end


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"


class FakeGateway:
    """Answers each path with a canned (status, body) and records the requests."""

    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v3/")
        self.requests.append((path, await request.json()))
        status, body = self.answers[path]
        if path == "watch":
            response = web.StreamResponse(status=status)
            await response.prepare(request)
            for line in body:
                await response.write(json.dumps(line).encode() + b"\n")
            await response.write_eof()
            return response
        return web.json_response(body, status=status)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[FakeGateway, EtcdClient]]:
    fake = FakeGateway({})
    app = web.Application()
    app.router.add_post("/v3/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = closed_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    client = EtcdClient(f"http://127.0.0.1:{port}")
    yield fake, client
    await client.close()
    await runner.cleanup()


HEADER = {"header": {"revision": "7"}}
NOT_FOUND = {"error": "etcdserver: requested lease not found", "code": 5, "message": "lease nf"}


async def test_encodes_requests_and_decodes_answers(
    gateway: tuple[FakeGateway, EtcdClient],
) -> None:
    fake, client = gateway
    fake.answers = {
        "lease/grant": (200, HEADER | {"ID": "123", "TTL": "2"}),
        "lease/keepalive": (200, {"result": HEADER | {"ID": "123"}}),  # TTL omitted: gone
        "kv/put": (200, HEADER),
        "kv/range": (
            200,
            HEADER
            | {
                "kvs": [
                    {
                        "key": b64(b"/p/a"),
                        "value": b64(b"v"),
                        "create_revision": "3",
                        "mod_revision": "5",
                        "lease": "123",
                    }
                ]
            },
        ),
        "lease/revoke": (404, NOT_FOUND),
    }
    assert await client.grant(1) == (123, 2)
    assert await client.keepalive(123) == 0
    assert await client.put("/p/a", b"v", lease=123) == 7
    kvs, revision = await client.range_prefix("/p/")
    assert revision == 7
    assert (kvs[0].key, kvs[0].value, kvs[0].mod_revision, kvs[0].lease) == ("/p/a", b"v", 5, 123)
    await client.revoke(123)  # not found is fine: it is gone either way
    assert fake.requests[2] == ("kv/put", {"key": b64(b"/p/a"), "value": b64(b"v"), "lease": "123"})
    assert fake.requests[3] == ("kv/range", {"key": b64(b"/p/"), "range_end": b64(b"/p0")})


async def test_errors_are_typed(gateway: tuple[FakeGateway, EtcdClient]) -> None:
    fake, client = gateway
    fake.answers = {
        "kv/put": (404, NOT_FOUND),
        "kv/range": (503, {"error": "etcdserver: leader changed", "code": 14}),
    }
    with pytest.raises(EtcdError, match="lease nf") as info:
        await client.put("/k", b"v", lease=9)
    assert info.value.code == 5
    with pytest.raises(DiscoveryUnavailableError, match="leader changed"):
        await client.range_prefix("/p/")


async def test_watch_stream_parses_events_and_stream_errors(
    gateway: tuple[FakeGateway, EtcdClient],
) -> None:
    fake, client = gateway
    put = {"kv": {"key": b64(b"/p/a"), "value": b64(b"1"), "mod_revision": "8"}}
    delete = {
        "type": "DELETE",
        "kv": {"key": b64(b"/p/a"), "mod_revision": "9"},
        "prev_kv": put["kv"],
    }
    unavailable = {"error": {"grpc_code": 14, "http_code": 503, "message": "transport is closing"}}
    fake.answers = {
        "watch": (
            200,
            [
                {"result": HEADER | {"created": True}},
                {"result": HEADER | {"events": [put, delete]}},
                unavailable,
            ],
        )
    }
    stream = client.watch("/p/", start_revision=8)
    created = await anext(stream)
    assert created.created
    assert created.events == ()
    changes = await anext(stream)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in changes.events] == [
        ("PUT", "/p/a", 8),
        ("DELETE", "/p/a", 9),
    ]
    assert changes.events[1].prev is not None
    assert changes.events[1].prev.value == b"1"
    with pytest.raises(DiscoveryUnavailableError, match="transport is closing"):
        await anext(stream)
    assert fake.requests[0][1]["create_request"]["start_revision"] == "8"


async def test_unreachable_etcd_raises_unavailable_and_keeps_nothing() -> None:
    discovery = EtcdDiscovery(f"http://127.0.0.1:{closed_port()}", retry_interval=0.01)
    reg = ServiceRegistration(id="w1", service="llm", address="http://w1")
    with pytest.raises(DiscoveryUnavailableError, match="unreachable"):
        await discovery.register(reg, ttl=2)
    with pytest.raises(DiscoveryUnavailableError):
        await discovery.list("llm")
    await discovery.deregister("w1")  # nothing was kept, nothing to do
    await discovery.close()


def test_prefix_must_end_with_slash() -> None:
    with pytest.raises(ValueError, match="prefix must end with '/'"):
        EtcdDiscovery(prefix="/inferno")
