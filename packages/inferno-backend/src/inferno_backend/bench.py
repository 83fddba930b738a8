"""A serving benchmark client: N streaming requests at concurrency C against an OpenAI server.

Measures what ``vllm bench serve`` reports: request throughput, output tokens/s, time to first
token (TTFT), time per output token after the first (TPOT) and inter-token latency (ITL), with
mean, median and p99.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

__all__ = ["BenchResult", "RequestTiming", "format_table", "run_bench"]

_PROMPT_WORDS = [
    "Explain",
    "how",
    "a",
    "paged",
    "key",
    "value",
    "cache",
    "lets",
    "a",
    "language",
    "model",
    "server",
    "batch",
    "many",
    "requests",
    "without",
    "copying",
    "memory,",
    "and",
    "why",
    "that",
    "raises",
    "throughput",
]


@dataclass(slots=True)
class RequestTiming:
    """Timings of one request (seconds)."""

    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Aggregate figures of one run (latencies in milliseconds)."""

    url: str
    concurrency: int
    requests: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return asdict(self)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "mean": 1000 * statistics.fmean(ordered),
        "median": 1000 * statistics.median(ordered),
        "p99": 1000 * p99,
    }


def _prompt(index: int, words: int) -> str:
    picked = [_PROMPT_WORDS[(index + i) % len(_PROMPT_WORDS)] for i in range(words)]
    return f"Request {index}: " + " ".join(picked)


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
) -> RequestTiming:
    start = time.perf_counter()
    timing = RequestTiming(ok=False)
    last = start
    try:
        async with session.post(url, json=payload, headers=headers) as resp:
            if resp.status != 200:
                timing.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return timing
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    timing.output_tokens = chunk["usage"]["completion_tokens"]
                    timing.prompt_tokens = chunk["usage"]["prompt_tokens"]
                choices = chunk.get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if timing.ttft == 0.0:
                    timing.ttft = now - start
                else:
                    timing.itl.append(now - last)
                last = now
        timing.latency = time.perf_counter() - start
        timing.ok = timing.ttft > 0
        if not timing.output_tokens:
            timing.output_tokens = len(timing.itl) + 1
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    return timing


async def run_bench(
    base_url: str,
    *,
    concurrency: int,
    requests: int,
    model: str = "default",
    max_tokens: int = 64,
    prompt_words: int = 24,
    api_key: str | None = None,
    warmup: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> BenchResult:
    """Send ``requests`` streaming completions, at most ``concurrency`` at a time.

    Every request asks for exactly ``max_tokens`` tokens (``ignore_eos``) so runs compare the
    same work; greedy by default, sampled at ``temperature`` / ``top_p`` when asked (a server
    that samples slowly is slow for most real traffic). ``warmup`` requests run first and are
    not counted.
    """
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def payload(i: int) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": _prompt(i, prompt_words),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    # A fresh connection per request: some servers (llama.cpp's) close idle keep-alive
    # connections, and a reused dead one would count as a failed request of theirs.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for i in range(warmup):
            await _one(session, url, payload(-1 - i), headers)
        gate = asyncio.Semaphore(concurrency)

        async def limited(i: int) -> RequestTiming:
            async with gate:
                return await _one(session, url, payload(i), headers)

        started = time.perf_counter()
        timings = await asyncio.gather(*(limited(i) for i in range(requests)))
        duration = time.perf_counter() - started
    done = [t for t in timings if t.ok]
    out_tokens = sum(t.output_tokens for t in done)
    tpot = [(t.latency - t.ttft) / (t.output_tokens - 1) for t in done if t.output_tokens > 1]
    return BenchResult(
        url=base_url,
        concurrency=concurrency,
        requests=requests,
        completed=len(done),
        failed=len(timings) - len(done),
        duration_s=duration,
        total_input_tokens=sum(t.prompt_tokens for t in done),
        total_output_tokens=out_tokens,
        request_throughput=len(done) / duration,
        output_throughput=out_tokens / duration,
        ttft_ms=_summary([t.ttft for t in done]),
        tpot_ms=_summary(tpot),
        itl_ms=_summary([x for t in done for x in t.itl]),
        e2e_ms=_summary([t.latency for t in done]),
    )


def format_table(result: BenchResult, title: str = "Serving Benchmark Result") -> str:
    """The result as a text table in the layout of ``vllm bench serve``."""
    rows = [
        f"{title:=^60}",
        f"{'Server:':<44}{result.url:>16}",
        f"{'Concurrency:':<44}{result.concurrency:>16}",
        f"{'Successful requests:':<44}{result.completed:>16}",
        f"{'Failed requests:':<44}{result.failed:>16}",
        f"{'Benchmark duration (s):':<44}{result.duration_s:>16.2f}",
        f"{'Total input tokens:':<44}{result.total_input_tokens:>16}",
        f"{'Total generated tokens:':<44}{result.total_output_tokens:>16}",
        f"{'Request throughput (req/s):':<44}{result.request_throughput:>16.2f}",
        f"{'Output token throughput (tok/s):':<44}{result.output_throughput:>16.2f}",
    ]
    for name, label, values in (
        ("Time to First Token", "TTFT", result.ttft_ms),
        ("Time per Output Token (excl. 1st token)", "TPOT", result.tpot_ms),
        ("Inter-token Latency", "ITL", result.itl_ms),
        ("End-to-end Latency", "E2EL", result.e2e_ms),
    ):
        rows.append(f"{name:-^60}")
        rows.append(f"{f'Mean {label} (ms):':<44}{values['mean']:>16.2f}")
        rows.append(f"{f'Median {label} (ms):':<44}{values['median']:>16.2f}")
        rows.append(f"{f'P99 {label} (ms):':<44}{values['p99']:>16.2f}")
    rows.append("=" * 60)
    return "\n".join(rows)
