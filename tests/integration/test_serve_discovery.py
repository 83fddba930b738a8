"""A real ``inferno serve`` registering in a real etcd with a short lease.

The registration appears once the daemon is ready, lists the model, carries load signals that
follow the engine (a running request shows up within a refresh), and SIGTERM revokes it at once
rather than leaving it to expire with the lease.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest
from inferno_discovery import EtcdDiscovery, ServiceInfo

from .etcd_server import EtcdServer
from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL_S = 6.0  # refreshes every 2 s; a revoke must beat the expiry by far
MAX_NUM_SEQS = 8


async def _poll(
    discovery: EtcdDiscovery, accept: Callable[[list[ServiceInfo]], bool], within: float
) -> list[ServiceInfo]:
    """List ``inferno`` until ``accept(listing)`` holds; the last listing (raises after
    ``within`` seconds)."""
    deadline = time.monotonic() + within
    listing = await discovery.list("inferno")
    while not accept(listing):
        if time.monotonic() > deadline:
            raise AssertionError(f"registry never matched within {within} s: {listing}")
        await asyncio.sleep(0.02)
        listing = await discovery.list("inferno")
    return listing


async def _stream_slowly(url: str, started: asyncio.Event) -> None:
    """One long streamed completion; sets ``started`` at its first chunk."""
    payload = {
        "model": "default",
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/completions", json=payload) as resp,
    ):
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            if raw.startswith(b"data: {"):
                json.loads(raw[6:])
                started.set()


async def test_registration_lives_with_the_daemon_and_is_revoked_on_sigterm(
    etcd: EtcdServer,
) -> None:
    prefix = f"/serve-{uuid.uuid4().hex[:8]}/"
    discovery = EtcdDiscovery(etcd.endpoint, prefix=prefix)
    server = ServeProcess(
        "--discovery", f"{etcd.url}{prefix}", "--discovery-ttl", str(TTL_S),
        "--max-num-seqs", str(MAX_NUM_SEQS),
    )  # fmt: skip
    try:
        server.start()
        (info,) = await _poll(discovery, lambda listing: len(listing) == 1, within=10)
        assert info.address == server.url
        assert info.models == ("default",)
        assert info.load.running_requests == 0
        assert info.load.queue_depth == 0
        assert info.load.free_slots == MAX_NUM_SEQS

        # Load signals are republished every TTL / 3: a running request shows up in the registry.
        started = asyncio.Event()
        stream = asyncio.create_task(_stream_slowly(server.url, started))
        try:
            await asyncio.wait_for(started.wait(), timeout=60)
            (busy,) = await _poll(
                discovery,
                lambda listing: bool(listing) and listing[0].load.running_requests == 1,
                within=TTL_S,
            )
            assert busy.load.free_slots == MAX_NUM_SEQS - 1
            assert busy.load.kv_usage > 0
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)

        server.terminate()
        signalled = time.monotonic()
        await _poll(discovery, lambda listing: listing == [], within=TTL_S)
        gone_after = time.monotonic() - signalled
        # Revoked on shutdown, not expired: well inside the lease.
        assert gone_after < TTL_S / 3, f"registration lingered {gone_after:.2f} s after SIGTERM"
        assert server.stop() == 0
    finally:
        server.stop()
        await discovery.close()
