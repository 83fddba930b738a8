"""A watch across a silent network partition: the connection stays open but carries nothing.

A proxy between the watcher and a real etcd plays the network. `Blackhole.cut` makes every
open connection go silent for good (bytes are swallowed, nothing is closed, as when a route
disappears) and holds new ones silent too; `Blackhole.heal` lets new connections through
while the old ones stay dead. Without an idle timeout, a watch on such a connection waits
for TCP to notice, which can take hours; with one, it reopens and catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from inferno_discovery import (
    DiscoveryEvent,
    DiscoveryEventKind,
    EtcdDiscovery,
    ServiceRegistration,
)

from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

ADDED, REMOVED = DiscoveryEventKind.ADDED, DiscoveryEventKind.REMOVED


class Blackhole:
    """A TCP proxy to ``target`` whose links can be cut silently."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.generation = 0  # links opened in an earlier generation are dead
        self.dark = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Blackhole:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.generation += 1
        self.dark = True

    def heal(self) -> None:
        self.dark = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        generation = -1 if self.dark else self.generation  # born in the dark: dead
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        def alive() -> bool:
            return generation == self.generation

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if alive():
                        dst.write(data)
                        await dst.drain()
            if alive():
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _collect(
    events: AsyncIterator[DiscoveryEvent], into: asyncio.Queue[DiscoveryEvent]
) -> None:
    async for event in events:
        into.put_nowait(event)


async def _next(queue: asyncio.Queue[DiscoveryEvent], within: float) -> tuple[str, str]:
    # From a queue a task fills: a timed-out wait must not cancel the watch itself.
    event = await asyncio.wait_for(queue.get(), within)
    return event.kind, event.id


def _reg(rid: str) -> ServiceRegistration:
    return ServiceRegistration(id=rid, service="llm", address=f"http://{rid}:8000")


@pytest.mark.parametrize("idle_timeout", [0.5, None])
async def test_a_watch_recovers_from_a_silent_partition(
    etcd: EtcdServer, idle_timeout: float | None
) -> None:
    prefix = f"/it/{uuid.uuid4().hex}/"
    proxy = await Blackhole("127.0.0.1", etcd.client_port).start()
    watcher = EtcdDiscovery(
        proxy.url, prefix=prefix, retry_interval=0.1, watch_idle_timeout=idle_timeout
    )
    writer = EtcdDiscovery(etcd.endpoint, prefix=prefix)
    events: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
    reader = asyncio.create_task(_collect(watcher.watch("llm"), events))
    try:
        await writer.register(_reg("a"), ttl=30)
        assert await _next(events, 10) == (ADDED, "a")
        # Longer than the idle timeout with no change at all: a quiet watch stays a watch.
        await asyncio.sleep(1.5)
        proxy.cut()
        await writer.register(_reg("b"), ttl=30)
        with pytest.raises(TimeoutError):
            await _next(events, 1.5)  # the partition hides it
        proxy.heal()
        if idle_timeout is None:
            # The dead connection is never replaced: the change stays unseen.
            with pytest.raises(TimeoutError):
                await _next(events, 2.0)
            return
        assert await _next(events, 5) == (ADDED, "b")
        await writer.deregister("a")
        assert await _next(events, 5) == (REMOVED, "a")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await watcher.close(revoke=False)
        await writer.close()
        await proxy.close()
