"""Latency the gateway adds per request, against calling the same worker directly.

Three processes: a worker, the gateway in front of it, and this client. The client sends the
same requests at a fixed concurrency (16 by default) straight to the worker and through the
gateway, alternating the two in rounds so drift on a shared machine hits both alike, and
reports latency percentiles per path and their difference: the gateway's cost.

Workers:
- ``fake``: `inferno_gateway.testing.FakeWorker`, answering instantly, so the difference is the
  gateway alone (routing, one extra HTTP hop, SSE relay).
- ``daemon`` (skip with ``--no-daemon``): a real ``inferno serve`` on the default model; the
  generation dominates, so the difference is the gateway's share of a realistic request.

The worker is registered in the gateway's in-memory registry: discovery is not on the request
path, so etcd would change nothing measured here.

    uv run python benchmarks/gateway_bench.py [--concurrency 16] [--requests 400] [--no-daemon]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

RESULTS = Path(__file__).parent / "results" / "gateway.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- child processes ---------------------------------------------------------------------------


async def _run_fake_worker(port: int, tokens: int) -> None:
    from inferno_gateway.testing import FakeWorker

    await FakeWorker("bench", tokens=tokens).start(port=port)
    await asyncio.Event().wait()


async def _run_gateway(port: int, worker_url: str, model: str) -> None:
    from aiohttp import web
    from inferno_discovery import InMemoryDiscovery, InMemoryRegistry, ServiceRegistration
    from inferno_gateway import Gateway, GatewayConfig, build_app, build_policy
    from inferno_gateway.cli import configure_logging

    configure_logging("json", "warning")
    registry = InMemoryRegistry()
    worker_side = InMemoryDiscovery(registry)
    await worker_side.register(
        ServiceRegistration(id="w", service="inferno", address=worker_url, models=(model,)),
        ttl=3600,
    )
    config = GatewayConfig(port=port)
    gateway = Gateway(config, InMemoryDiscovery(registry), build_policy(config.policy))
    runner = web.AppRunner(build_app(gateway), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measurement -------------------------------------------------------------------------------


async def _request(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], route: str
) -> float:
    start = time.perf_counter()
    async with session.post(url + route, json=body) as resp:
        payload = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}{route}: {resp.status} {payload[:200]!r}")
        if body.get("stream") and not payload.rstrip().endswith(b"data: [DONE]"):
            raise RuntimeError(f"{url}{route}: stream did not end with [DONE]")
    return time.perf_counter() - start


async def _batch(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[dict[str, Any]],
    route: str,
    concurrency: int,
) -> list[float]:
    """Send ``bodies`` with ``concurrency`` lanes; returns each request's latency."""
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def lane() -> None:
        while queue:
            latencies.append(await _request(session, url, queue.pop(), route))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies


def _summary(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    q = statistics.quantiles(ordered, n=100)
    return {
        "requests": len(ordered),
        "mean_ms": statistics.fmean(ordered) * 1e3,
        "p50_ms": q[49] * 1e3,
        "p90_ms": q[89] * 1e3,
        "p99_ms": q[98] * 1e3,
        "throughput_rps": len(ordered) / wall,
    }


async def _compare(
    direct: str,
    gateway: str,
    bodies: list[dict[str, Any]],
    route: str,
    concurrency: int,
    rounds: int,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = bodies[: max(concurrency, len(bodies) // 10)]
        for url in (direct, gateway):  # warm-up: connections, caches, the worker's first calls
            await _batch(session, url, warm, route, concurrency)
        samples: dict[str, list[float]] = {"direct": [], "gateway": []}
        walls = {"direct": 0.0, "gateway": 0.0}
        per_round = max(concurrency, len(bodies) // rounds)
        for r in range(rounds):
            chunk = bodies[r * per_round : (r + 1) * per_round] or bodies[:per_round]
            order = [("direct", direct), ("gateway", gateway)]
            for name, url in order if r % 2 == 0 else reversed(order):
                start = time.perf_counter()
                samples[name] += await _batch(session, url, chunk, route, concurrency)
                walls[name] += time.perf_counter() - start
    result: dict[str, Any] = {name: _summary(samples[name], walls[name]) for name in samples}
    d, g = result["direct"], result["gateway"]
    result["added_ms"] = {k: g[f"{k}_ms"] - d[f"{k}_ms"] for k in ("mean", "p50", "p90", "p99")}
    result["ratio_p50"] = g["p50_ms"] / d["p50_ms"]
    return result


def _scenario(
    worker_args: list[str],
    ready_path: str,
    model: str,
    cases: dict[str, tuple[str, list[dict[str, Any]]]],
    concurrency: int,
    rounds: int,
    start_timeout: float,
    serial: bool = False,
) -> dict[str, Any]:
    worker_port, gateway_port = _free_port(), _free_port()
    worker_url, gateway_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    worker = subprocess.Popen(
        [*worker_args, "--port", str(worker_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = _spawn("_gateway", str(gateway_port), worker_url, model)
    try:
        _wait_http(worker_url + ready_path, start_timeout, worker)
        _wait_http(gateway_url + "/health/ready", 30, gateway)
        out: dict[str, Any] = {}
        for name, (route, bodies) in cases.items():
            out[f"{name} @{concurrency}"] = asyncio.run(
                _compare(worker_url, gateway_url, bodies, route, concurrency, rounds)
            )
            if serial:  # one at a time: the hop's own cost, without queueing behind others
                out[f"{name} @1"] = asyncio.run(
                    _compare(worker_url, gateway_url, bodies[: len(bodies) // 4], route, 1, rounds)
                )
        return out
    finally:
        _stop(gateway)
        _stop(worker)


def _print(title: str, results: dict[str, Any]) -> None:
    print(f"\n{title}")
    cols = ("p50 ms", "p90 ms", "p99 ms", "mean ms", "req/s")
    head = f"{'case':<26} {'path':<8} " + " ".join(f"{c:>8}" for c in cols)
    print(head)
    print("-" * len(head))
    for case, r in results.items():
        for path in ("direct", "gateway"):
            s = r[path]
            print(
                f"{case:<26} {path:<8} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} {s['p99_ms']:8.2f}"
                f" {s['mean_ms']:8.2f} {s['throughput_rps']:8.1f}"
            )
        a = r["added_ms"]
        print(
            f"{case:<26} {'added':<8} {a['p50']:8.2f} {a['p90']:8.2f} {a['p99']:8.2f}"
            f" {a['mean']:8.2f}   (x{r['ratio_p50']:.2f} at p50)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=800, help="per path and case (fake worker)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--daemon-requests", type=int, default=128, help="per path (real daemon)")
    p.add_argument("--no-daemon", action="store_true", help="skip the real inferno serve")
    args = p.parse_args()

    tokens = 16
    fake_cases: dict[str, tuple[str, list[dict[str, Any]]]] = {
        "completion": (
            "/v1/completions",
            [{"model": "default", "prompt": f"p{i}"} for i in range(args.requests)],
        ),
        f"stream ({tokens} events)": (
            "/v1/completions",
            [{"model": "default", "prompt": f"p{i}", "stream": True} for i in range(args.requests)],
        ),
    }
    fake_worker = [sys.executable, __file__, "_worker", "--tokens", str(tokens)]
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "concurrency": args.concurrency,
        "fake_worker": _scenario(
            fake_worker,
            "/health/ready",
            "default",
            fake_cases,
            args.concurrency,
            args.rounds,
            30,
            serial=True,
        ),
    }
    _print(f"Fake worker (instant answers), concurrency {args.concurrency}", report["fake_worker"])
    if not args.no_daemon:
        n = args.daemon_requests
        daemon_cases: dict[str, tuple[str, list[dict[str, Any]]]] = {
            "daemon stream 8 tok": (
                "/v1/completions",
                [
                    {
                        "model": "default",
                        "prompt": f"Story {i}:",
                        "max_tokens": 8,
                        "ignore_eos": True,
                        "stream": True,
                    }
                    for i in range(n)
                ],
            ),
        }
        daemon = [sys.executable, "-m", "inferno_backend.cli", "serve", "--max-num-seqs", "16"]
        report["daemon"] = _scenario(
            daemon, "/health/ready", "default", daemon_cases, args.concurrency, args.rounds, 300
        )
        _print(f"inferno serve (default model), concurrency {args.concurrency}", report["daemon"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_args = argparse.ArgumentParser()
        worker_args.add_argument("_role")
        worker_args.add_argument("--tokens", type=int, default=16)
        worker_args.add_argument("--port", type=int, required=True)
        ns = worker_args.parse_args()
        asyncio.run(_run_fake_worker(ns.port, ns.tokens))
    elif len(sys.argv) > 1 and sys.argv[1] == "_gateway":
        asyncio.run(_run_gateway(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
    else:
        main()
