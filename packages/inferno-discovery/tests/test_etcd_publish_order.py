"""EtcdDiscovery's puts against a scripted client: the last update is the one etcd ends with.

A real etcd cannot hold a put in flight on demand; this client can, so the interleavings that
an outage makes rare (and CI found once) run here every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from inferno_discovery import (
    DiscoveryUnavailableError,
    EtcdClient,
    EtcdDiscovery,
    LoadSignals,
    ServiceRegistration,
)


class ScriptedClient(EtcdClient):
    """Keeps keys in a dict; each put can be held (``gate``) or made to fail (``down``)."""

    def __init__(self) -> None:
        super().__init__("http://scripted.invalid")
        self.store: dict[str, bytes] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.puts_started = 0
        self.next_lease = 100

    async def grant(self, ttl: int) -> tuple[int, int]:
        self.next_lease += 1
        return self.next_lease, ttl

    async def keepalive(self, lease_id: int) -> int:
        if self.down:
            raise DiscoveryUnavailableError("scripted outage")
        return 1

    async def revoke(self, lease_id: int) -> None:
        self.store.clear()

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        if self.down:
            raise DiscoveryUnavailableError("scripted outage")
        self.puts_started += 1
        await self.gate.wait()
        self.store[key] = value
        return len(self.store)


def reg(queue_depth: int) -> ServiceRegistration:
    return ServiceRegistration(
        id="w1",
        service="llm",
        address="http://w1:8000",
        load=LoadSignals(queue_depth=queue_depth),
    )


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), f"not true within {within} s"


def stored(client: ScriptedClient, discovery: EtcdDiscovery) -> ServiceRegistration:
    return ServiceRegistration.model_validate_json(client.store[discovery.key("llm", "w1")])


async def test_a_put_landing_after_a_failed_update_does_not_hide_it() -> None:
    # The CI failure: the keep-alive's put of an older value was in flight when etcd went down;
    # an update then failed, and the older put's success marked the newer value published.
    client = ScriptedClient()
    discovery = EtcdDiscovery(client=client, prefix="/t/", retry_interval=0.05)
    await discovery.register(reg(0), ttl=1)  # keep-alive every 1/3 s
    try:
        client.gate.clear()
        first = asyncio.ensure_future(discovery.update(reg(1)))  # its put is held
        await until(lambda: client.puts_started == 2)
        client.down = True
        # The writer is busy: recorded, not lost (and not waiting on the held put).
        await asyncio.wait_for(discovery.update(reg(2)), 1)
        client.down = False
        client.gate.set()
        await asyncio.wait_for(first, 1)
        await until(lambda: stored(client, discovery) == reg(2))
        await asyncio.sleep(0.5)  # a keep-alive round or more: nothing older overwrites it
        assert stored(client, discovery) == reg(2)
    finally:
        await discovery.close()


async def test_an_update_failing_during_an_outage_is_published_when_etcd_returns() -> None:
    client = ScriptedClient()
    discovery = EtcdDiscovery(client=client, prefix="/t/", retry_interval=0.05)
    await discovery.register(reg(0), ttl=1)
    try:
        client.down = True
        await discovery.update(reg(7))  # deferred, not raised
        assert stored(client, discovery) == reg(0)
        client.down = False
        await until(lambda: stored(client, discovery) == reg(7))
    finally:
        await discovery.close()


async def test_updates_while_a_put_is_held_end_with_the_last_one() -> None:
    client = ScriptedClient()
    discovery = EtcdDiscovery(client=client, prefix="/t/", retry_interval=0.05)
    await discovery.register(reg(0), ttl=1)
    try:
        client.gate.clear()
        held = asyncio.ensure_future(discovery.update(reg(1)))
        await until(lambda: client.puts_started == 2)
        for depth in range(2, 6):
            # Each returns at once: the writer in flight owns the puts.
            await asyncio.wait_for(discovery.update(reg(depth)), 1)
        assert client.puts_started == 2
        client.gate.set()
        await asyncio.wait_for(held, 1)  # its writer puts the newest value before returning
        assert stored(client, discovery) == reg(5)
        assert client.puts_started == 3  # 1..4 were superseded, not each put in turn
    finally:
        await discovery.close()
