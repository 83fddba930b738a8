"""Prefix affinity through the whole gateway: a shared prefix stays on one worker, and a hot
prefix spills over once its worker reaches the load bound."""

from __future__ import annotations

import asyncio

import aiohttp
from inferno_gateway import WORKER_HEADER, PrefixAffinityPolicy

from .conftest import ClusterFactory

PREFIX = "You are a helpful assistant. Answer briefly. "  # longer than prefix_chars below


async def _complete(http: aiohttp.ClientSession, url: str, prompt: str) -> str:
    body = {"model": "default", "prompt": prompt, "stream": True}
    async with http.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        text = await resp.text()
        assert text.endswith("data: [DONE]\n\n")
        return resp.headers[WORKER_HEADER]


async def test_shared_prefix_lands_on_one_worker(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster(prefix_chars=32)
    for name in ("a", "b", "c"):
        await cluster.add_worker(name)
    owners = [await _complete(http, cluster.url, f"{PREFIX} question {i}") for i in range(12)]
    assert len(set(owners)) == 1
    others = {await _complete(http, cluster.url, f"Topic {i}: {PREFIX}") for i in range(24)}
    assert len(others) == 3  # different prefixes spread over every worker


async def test_hot_prefix_stays_within_the_load_bound(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    epsilon, slack, concurrency = 0.25, 2.0, 24
    policy = PrefixAffinityPolicy(epsilon=epsilon, slack=slack)
    cluster = await make_cluster(policy=policy, prefix_chars=32)
    workers = [await cluster.add_worker(n, tokens=8, token_delay=0.05) for n in ("a", "b", "c")]
    owners = await asyncio.gather(
        *(_complete(http, cluster.url, f"{PREFIX} q{i}") for i in range(concurrency))
    )
    counts = {w.id: owners.count(w.id) for w in workers}
    owner = max(counts, key=lambda k: counts[k])
    # Affinity: the prefix's worker takes more than a fair share...
    assert counts[owner] > concurrency / len(workers), counts
    # ...but never more in flight than the bound allows: (1 + e) * average + c, where the
    # average is at most (concurrency - 1) / n when the last request is routed.
    bound = (1 + epsilon) * (concurrency - 1) / len(workers) + slack
    for worker in workers:
        assert worker.max_in_flight <= int(bound) + 1, (worker.id, worker.max_in_flight)
    assert sum(1 for c in counts.values() if c > 0) >= 2, counts  # it spilled over
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    assert 'reason="overflow"' in metrics
    assert 'reason="affinity"' in metrics
