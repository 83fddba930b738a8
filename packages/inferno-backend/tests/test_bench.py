"""The benchmark client against the fake-engine app."""

from __future__ import annotations

from inferno_backend.bench import format_table, run_bench

from .conftest import MakeClient


async def test_bench_measures_every_request(make_client: MakeClient) -> None:
    client, _ = await make_client(engine_options={"script": ["a"] * 50})
    url = str(client.make_url("/"))
    result = await run_bench(url, concurrency=4, requests=8, max_tokens=5, warmup=0)
    assert result.completed == 8
    assert result.failed == 0
    assert result.total_output_tokens == 40
    assert result.ttft_ms["mean"] > 0
    assert result.itl_ms["p99"] >= result.itl_ms["median"] > 0
    assert "Output token throughput" in format_table(result)


async def test_bench_counts_failures(make_client: MakeClient) -> None:
    client, _ = await make_client()
    url = str(client.make_url("/"))
    result = await run_bench(url, concurrency=2, requests=2, model="missing", warmup=0)
    assert result.failed == 2
    assert result.completed == 0
