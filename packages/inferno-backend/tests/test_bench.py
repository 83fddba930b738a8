"""The benchmark client against the fake-engine app."""

from __future__ import annotations

import pytest
from inferno_backend.bench import format_table, run_bench
from inferno_backend.cli import main

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


async def test_bench_samples_when_asked(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"script": ["a"] * 50})
    url = str(client.make_url("/"))
    result = await run_bench(
        url, concurrency=1, requests=2, max_tokens=3, warmup=0, temperature=0.8, top_p=0.9
    )
    assert result.completed == 2
    sp = orch.engines[0].requests[-1].sampling
    assert (sp.temperature, sp.top_p) == (0.8, 0.9)


@pytest.mark.parametrize("flag", [["--temperature", "-1"], ["--top-p", "0"], ["--top-p", "1.5"]])
def test_bench_cli_refuses_bad_sampling(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", *flag]) == 2
    assert "--top-p in (0, 1]" in capsys.readouterr().err
