"""inferno-gateway in front of real ``inferno serve`` workers found through a real etcd.

One test walks the whole story, because every step needs the workers of the step before (each
loads the default model, ~10 s on a 2-core CPU): two workers register, the gateway routes the
official ``openai`` client's traffic to both, one worker is SIGKILLed under load (no request
started after the kill may fail, and the worker leaves the gateway's table within its lease
TTL), then a new worker starts and gets traffic, and requests sharing a long system prompt
all land on one worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import openai
import pytest

from .etcd_server import EtcdServer
from .serve_daemon import ServeProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_TTL_S = 3.0  # each worker's lease (inferno serve --discovery-ttl)
MODEL = "default"


class GatewayProcess:
    """``inferno-gateway`` in a subprocess; `start` waits until it answers /health/live."""

    def __init__(self, discovery: str, *extra: str, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable, "-m", "inferno_gateway.cli", "--discovery", discovery,
            "--port", str(self.port), *extra,
        ]  # fmt: skip
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = out = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inferno-gateway exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health/live", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"inferno-gateway did not answer within {timeout} s")

    def workers(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/gateway/workers", timeout=5) as resp:
            return list(json.loads(resp.read())["workers"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


@dataclass
class Outcome:
    started: float
    finished: float
    ok: bool
    error: str = ""


async def _until(condition: Any, within_s: float, what: str) -> float:
    """Poll ``condition`` (sync) until true; returns the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(condition):
        if time.monotonic() - start > within_s:
            pytest.fail(f"{what}: not within {within_s} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def _one(client: openai.AsyncOpenAI, i: int) -> Outcome:
    started = time.monotonic()
    try:
        if i % 2:
            raw = await client.completions.with_raw_response.create(
                model=MODEL, prompt=f"Request {i}: the weather is", max_tokens=6
            )
            assert raw.headers.get("x-inferno-worker")
            assert raw.parse().choices[0].text is not None
        else:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Say hello, number {i}."}],
                max_tokens=6,
                stream=True,
            )
            pieces = [c.choices[0].delta.content async for c in stream if c.choices]
            assert pieces
        return Outcome(started, time.monotonic(), True)
    except Exception as exc:
        return Outcome(started, time.monotonic(), False, repr(exc))


async def _load(client: openai.AsyncOpenAI, stop: asyncio.Event, lanes: int) -> list[Outcome]:
    """``lanes`` clients sending back-to-back requests until ``stop`` is set."""
    outcomes: list[Outcome] = []
    counter = iter(range(10**9))

    async def lane() -> None:
        while not stop.is_set():
            outcomes.append(await _one(client, next(counter)))

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return outcomes


@pytest.fixture
def workers(etcd: EtcdServer, tmp_path: Path) -> Iterator[tuple[str, list[ServeProcess]]]:
    """A discovery URL with a prefix of its own, and the workers a test starts (stopped after)."""
    discovery = f"{etcd.url}/gateway-{uuid.uuid4().hex[:8]}/"
    started: list[ServeProcess] = []
    yield discovery, started
    for worker in started:
        worker.stop(timeout=20)


def _serve(discovery: str, log: Path) -> ServeProcess:
    return ServeProcess(
        "--discovery",
        discovery,
        "--discovery-ttl",
        str(int(LEASE_TTL_S)),
        "--max-num-seqs",
        "8",
        log_path=log,
    )


async def test_gateway_over_real_workers_survives_a_kill_and_picks_up_a_new_worker(
    workers: tuple[str, list[ServeProcess]], tmp_path: Path
) -> None:
    discovery, started = workers
    first = [_serve(discovery, tmp_path / f"worker{i}.log") for i in range(2)]
    started.extend(first)
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in first))
    gateway = GatewayProcess(discovery, log_path=tmp_path / "gateway.log").start()
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    try:
        await _until(lambda: len(gateway.workers()) == 2, 15, "both workers in the table")
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]

        # Steady load, then SIGKILL one worker in the middle of it.
        stop = asyncio.Event()
        load = asyncio.create_task(_load(client, stop, lanes=4))
        await asyncio.sleep(4.0)
        table = gateway.workers()
        assert all(w["routed"] > 0 for w in table), table  # both got traffic
        victim = first[0]
        victim_id = next(w["id"] for w in table if w["address"] == victim.url)
        assert victim.proc is not None
        victim.proc.kill()
        killed_at = time.monotonic()
        gone_after = await _until(
            lambda: victim_id not in {w["id"] for w in gateway.workers()},
            LEASE_TTL_S + 3,
            "the killed worker leaving the table",
        )
        await asyncio.sleep(1.0)
        stop.set()
        outcomes = await load
        settled = [o for o in outcomes if o.finished < killed_at]
        after = [o for o in outcomes if o.started >= killed_at]
        assert settled, "no request finished before the kill"
        assert all(o.ok for o in settled), [o.error for o in settled if not o.ok]
        assert len(after) >= 4, "too little traffic after the kill to prove anything"
        failed = [o.error for o in after if not o.ok]
        assert not failed, failed
        assert gone_after <= LEASE_TTL_S + 2.0, f"left the table {gone_after:.1f} s after the kill"

        # A new worker joins: it enters the table and receives traffic.
        newcomer = _serve(discovery, tmp_path / "worker2.log")
        started.append(newcomer)
        await asyncio.to_thread(newcomer.start)
        await _until(
            lambda: newcomer.url in {w["address"] for w in gateway.workers()},
            15,
            "the new worker in the table",
        )
        results = await asyncio.gather(*(_one(client, 1000 + i) for i in range(16)))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        by_address = {w["address"]: w for w in gateway.workers()}
        assert by_address[newcomer.url]["routed"] > 0, by_address
        assert victim.url not in by_address

        # Prefix affinity on real workers: one long system prompt, different questions. The
        # burst above must first drain from the load the workers push, or the load bound
        # rightly sends some of these elsewhere.
        await _until(
            lambda: all(
                w["load"]["running_requests"] + w["load"]["queue_depth"] == 0
                for w in gateway.workers()
            ),
            15,
            "the pushed load to settle",
        )
        system = "You are a terse assistant for a hardware store. Answer in one short line. " * 4
        owners = set()
        for i in range(6):
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Do you sell item {i}?"},
                ],
                max_tokens=4,
            )
            owners.add(raw.headers["x-inferno-worker"])
        assert len(owners) == 1, owners
    finally:
        await client.close()
        gateway.stop()
        # Shown by pytest only when the test fails.
        print((tmp_path / "gateway.log").read_text(errors="replace")[-3000:])
