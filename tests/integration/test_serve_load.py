"""Bounded load and graceful shutdown of a real ``inferno serve`` on the default model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _payload(i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "default",
        "prompt": f"Story number {i}:",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


async def _stream(
    session: aiohttp.ClientSession, url: str, i: int, max_tokens: int, drop_after: int | None
) -> str | None:
    """Stream one completion; return its finish_reason, or None after disconnecting early."""
    finish = None
    async with session.post(url + "/v1/completions", json=_payload(i, max_tokens)) as resp:
        assert resp.status == 200, await resp.text()
        seen = 0
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            seen += 1
            if drop_after is not None and seen >= drop_after:
                return None  # leaving the block closes the connection mid-stream
            finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
    return finish


async def test_64_streams_some_disconnecting() -> None:
    server = ServeProcess("--max-num-seqs", "64").start()
    try:
        idle = server.get_json("/v1/status")
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                *(
                    _stream(session, server.url, i, 12, 3 if i % 4 == 0 else None)
                    for i in range(64)
                ),
                return_exceptions=True,
            )
        stayed = [r for i, r in enumerate(results) if i % 4 != 0]
        assert stayed == ["length"] * 48, [r for r in stayed if r != "length"]
        for _ in range(50):
            status = server.get_json("/v1/status")
            model: Any = status["models"]["default"]  # type: ignore[index]
            if model["running"] == 0 and model["kv_blocks_free"] == model["kv_blocks_total"]:
                break
            await asyncio.sleep(0.1)
        assert model["running"] == 0
        assert model["waiting"] == 0
        assert model["kv_blocks_free"] == model["kv_blocks_total"]
        assert status["memory"] == idle["memory"]
        assert status["inflight_requests"] == 0
    finally:
        assert server.stop() == 0


async def test_sigterm_drains_inflight_and_refuses_new() -> None:
    server = ServeProcess("--max-num-seqs", "8").start()
    try:
        async with aiohttp.ClientSession() as session:
            inflight = [
                asyncio.create_task(_stream(session, server.url, i, 48, None)) for i in range(4)
            ]
            for _ in range(200):
                if server.get_json("/v1/status")["running"]:
                    break
                await asyncio.sleep(0.05)
            server.terminate()
            await asyncio.sleep(0.3)
            async with session.post(
                server.url + "/v1/completions", json={**_payload(99, 4), "stream": False}
            ) as late:
                assert late.status == 503
            server.terminate()  # a second SIGTERM does not cut the drain short
            assert await asyncio.gather(*inflight) == ["length"] * 4
    finally:
        assert server.stop() == 0
