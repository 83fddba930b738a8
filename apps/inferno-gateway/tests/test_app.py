"""The gateway over fake workers: routes, errors, streaming, failover, health, metrics."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import openai
import pytest
from inferno_gateway import WORKER_HEADER, RoundRobinPolicy

from .conftest import ClusterFactory


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


async def _sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The data fields of an SSE body, in order."""
    text = (await resp.read()).decode()
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


async def test_models_are_the_union_of_ready_workers(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", models=["m1"])
    await cluster.add_worker("b", models=["m1", "m2"])
    await cluster.add_worker("c", models=["m3"], metadata={"status": "draining"})
    client = _client(cluster.url)
    try:
        models = await client.models.list()
        assert sorted(m.id for m in models.data) == ["m1", "m2"]
        one = await client.models.retrieve("m1")
        assert one.model_extra == {"workers": 2}
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("m3")
    finally:
        await client.close()


async def test_chat_and_completions_with_the_openai_client(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", tokens=3)
    client = _client(cluster.url)
    try:
        chat = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content == "a:0 a:1 a:2 "
        stream = await client.completions.create(model="default", prompt="Once", stream=True)
        pieces = [chunk.choices[0].text async for chunk in stream]
        assert pieces == ["a:0 ", "a:1 ", "a:2 "]
        chat_stream = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        deltas = [c.choices[0].delta.content async for c in chat_stream]
        assert "".join(d or "" for d in deltas) == "a:0 a:1 a:2 "
    finally:
        await client.close()
    assert [b.get("stream", False) for b in cluster.workers["a"].bodies] == [False, True, True]


async def test_responses_reach_a_worker_serving_the_model(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", models=["m1"], tokens=2)
    await cluster.add_worker("b", models=["m2"], tokens=2)
    client = _client(cluster.url)
    try:
        resp = await client.responses.with_raw_response.create(
            model="m2", input="hi", instructions="Be brief"
        )
        assert resp.headers[WORKER_HEADER] == "b"
        assert resp.parse().output_text == "b:0 b:1 "
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="m3", input="x")
    finally:
        await client.close()
    assert cluster.workers["b"].bodies == [
        {"model": "m2", "input": "hi", "instructions": "Be brief"}
    ]


async def test_stream_events_are_relayed_as_they_come(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    gate = asyncio.Event()
    worker = await cluster.add_worker("a", tokens=3, gate=gate)
    body = {"model": "default", "prompt": "x", "stream": True}
    async with http.post(cluster.url + "/v1/completions", json=body) as resp:
        # The worker holds the rest of the stream until the gate opens: the first event can
        # only reach us if the gateway forwards it without waiting for more.
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert json.loads(first[6:])["choices"][0]["text"] == "a:0 "
        assert worker.in_flight == 1
        gate.set()
        rest = (await resp.read()).decode()
    assert rest.endswith("data: [DONE]\n\n")
    assert '"a:2 "' in rest


async def test_tokenize_and_detokenize_reach_a_worker(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", models=["m1"])
    async with http.post(cluster.url + "/tokenize", json={"model": "m1", "prompt": "hi"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"count": 2, "tokens": [104, 105], "worker": "a"}
    body = {"model": "m1", "tokens": [1, 2]}
    async with http.post(cluster.url + "/detokenize", json=body) as resp:
        assert await resp.json() == {"prompt": "1 2", "worker": "a"}
    async with http.post(cluster.url + "/tokenize", json={"model": "m2", "prompt": "x"}) as resp:
        assert resp.status == 404
    assert [b["model"] for b in cluster.workers["a"].bodies] == ["m1", "m1"]


async def test_embeddings_reach_a_worker_serving_the_model(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", models=["m1"])
    await cluster.add_worker("b", models=["m2"])
    client = _client(cluster.url)
    try:
        resp = await client.embeddings.with_raw_response.create(
            model="m2", input=["hi", "you"], encoding_format="float"
        )
        assert resp.headers[WORKER_HEADER] == "b"
        body = resp.parse()
        assert [d.embedding for d in body.data] == [[2.0, 0.0], [3.0, 1.0]]
        assert body.usage.prompt_tokens == 5
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="m3", input="x")
    finally:
        await client.close()
    assert cluster.workers["a"].bodies == []
    assert cluster.workers["b"].bodies == [
        {"model": "m2", "input": ["hi", "you"], "encoding_format": "float"}
    ]


async def test_unknown_model_is_a_404_openai_error(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", models=["m1"])
    client = _client(cluster.url)
    try:
        with pytest.raises(openai.NotFoundError) as info:
            await client.completions.create(model="nope", prompt="x")
    finally:
        await client.close()
    body: Any = info.value.body
    assert body["code"] == "model_not_found"
    assert body["param"] == "model"
    assert "m1" in body["message"]
    assert cluster.workers["a"].bodies == []


async def test_bad_bodies_and_unknown_routes(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a")
    for data, needle in [(b"{not json", "not valid JSON"), (b"[1]", "JSON object")]:
        async with http.post(cluster.url + "/v1/completions", data=data) as resp:
            assert resp.status == 400
            assert needle in (await resp.json())["error"]["message"]
    async with http.post(cluster.url + "/v1/completions", json={"prompt": "x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "model"
    async with http.get(cluster.url + "/v1/nothing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "unknown_route"
    big = json.dumps({"model": "default", "prompt": "x" * (5 * 2**20)}).encode()
    async with http.post(cluster.url + "/v1/completions", data=io.BytesIO(big)) as resp:
        assert resp.status == 413


async def test_no_workers_is_503_and_not_ready(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    async with http.get(cluster.url + "/health/ready") as resp:
        assert resp.status == 503
        assert (await resp.json())["workers"] == {"known": 0, "ready": 0}
    async with http.get(cluster.url + "/health/live") as resp:
        assert resp.status == 200
    body = {"model": "default", "prompt": "x"}
    async with http.post(cluster.url + "/v1/completions", json=body) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_worker_available"
    await cluster.add_worker("a")
    async with http.get(cluster.url + "/health/ready") as resp:
        assert resp.status == 200


async def test_refused_connection_is_retried_on_another_worker(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster(policy=RoundRobinPolicy())
    dead = await cluster.add_worker("a")
    await cluster.add_worker("b")
    await dead.stop()  # still registered: its lease has not expired
    body = {"model": "default", "prompt": "x", "stream": True}
    for _ in range(4):
        async with http.post(cluster.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers[WORKER_HEADER] == "b"
            assert (await _sse(resp))[-1] == "[DONE]"
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    # Only the first request tried "a": the refusal put it in its cool-down.
    assert 'inferno_gateway_retries_total{reason="connect",worker="a"} 1.0' in metrics
    served = 'inferno_gateway_requests_total{route="/v1/completions",status="200",worker="b"}'
    assert f"{served} 4.0" in metrics


async def test_a_draining_worker_is_skipped_and_its_503_passed_on_when_alone(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster(policy=RoundRobinPolicy())
    draining = await cluster.add_worker("a", draining=True)
    await cluster.add_worker("b")
    body = {"model": "default", "prompt": "x"}
    for _ in range(2):
        async with http.post(cluster.url + "/v1/completions", json=body) as resp:
            assert (resp.status, resp.headers[WORKER_HEADER]) == (200, "b")
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    # Round-robin offers "a" first both times; a 503 costs no cool-down (overload passes).
    assert 'inferno_gateway_retries_total{reason="unavailable",worker="a"} 2.0' in metrics
    cluster.registry.remove("inferno", "b")
    await cluster.wait_for(lambda: cluster.gateway.table.get("b") is None)
    async with http.post(cluster.url + "/v1/completions", json=body) as resp:
        assert resp.status == 503  # nobody else to try: the worker's own answer goes through
        assert (await resp.json())["error"]["code"] == "draining"
    assert len(draining.bodies) == 3


async def test_every_worker_down_is_a_502(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    for worker_id in ("a", "b"):
        await (await cluster.add_worker(worker_id)).stop()
    async with http.post(cluster.url + "/v1/completions", json={"model": "default"}) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_failed"
    assert "2 worker(s)" in error["message"]


async def test_a_worker_dying_mid_stream_ends_it_with_an_error_event(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", tokens=5, die_after=2)
    body = {"model": "default", "prompt": "x", "stream": True}
    async with http.post(cluster.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        events = await _sse(resp)
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["a:0 ", "a:1 "]
    error = json.loads(events[2])["error"]
    assert error["code"] == "upstream_stream_error"
    assert "a" in error["message"]
    assert events[3:] == ["[DONE]"]
    client = _client(cluster.url)
    try:
        stream = await client.completions.create(model="default", prompt="x", stream=True)
        with pytest.raises(openai.APIError, match="failed mid-stream"):
            async for _ in stream:
                pass
    finally:
        await client.close()
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    assert 'inferno_gateway_stream_errors_total{worker="a"} 2.0' in metrics


async def test_non_streamed_answer_lost_midway_is_retried(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster(policy=RoundRobinPolicy())
    doomed = await cluster.add_worker("a", token_delay=5.0)  # round-robin starts with "a"
    await cluster.add_worker("b", tokens=2)

    async def ask() -> tuple[int, str, Any]:
        body = {"model": "default", "prompt": "x"}
        async with http.post(cluster.url + "/v1/completions", json=body) as resp:
            return resp.status, resp.headers[WORKER_HEADER], await resp.json()

    request = asyncio.create_task(ask())
    await cluster.wait_for(lambda: doomed.in_flight == 1)
    await doomed.kill()  # the gateway has sent the request; nothing reached the client yet
    status, worker, answer = await request
    assert (status, worker) == (200, "b")
    assert answer["choices"][0]["text"] == "b:0 b:1 "


async def test_worker_removal_and_metrics(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a")
    worker_b = await cluster.add_worker("b")
    async with http.get(cluster.url + "/gateway/workers") as resp:
        listed = (await resp.json())["workers"]
    assert [(w["id"], w["ready"], w["address"]) for w in listed] == [
        ("a", True, cluster.workers["a"].url),
        ("b", True, worker_b.url),
    ]
    cluster.registry.remove("inferno", "b")
    await cluster.wait_for(lambda: cluster.gateway.table.get("b") is None)
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    assert 'inferno_gateway_workers{state="ready"} 1.0' in metrics
    assert "inferno_gateway_routing_decisions_total" in metrics


async def test_ollama_json_lines_are_relayed_as_they_come(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    gate = asyncio.Event()
    await cluster.add_worker("a", tokens=3, gate=gate)
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(cluster.url + "/api/chat", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        assert resp.headers[WORKER_HEADER] == "a"
        # Ollama streams unless told not to: the first line comes before the gate opens.
        first = await asyncio.wait_for(resp.content.readline(), 10)
        assert json.loads(first)["message"]["content"] == "a:0 "
        assert not gate.is_set()
        gate.set()
        rest = [json.loads(line) for line in (await resp.read()).decode().splitlines()]
    assert [line["done"] for line in rest] == [False, False, True]
    whole = await http.post(cluster.url + "/api/chat", json={**body, "stream": False})
    assert (await whole.json())["message"]["content"] == "a:0 a:1 a:2 "
    tags = await (await http.get(cluster.url + "/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["default"]
    assert (await (await http.get(cluster.url + "/api/version")).json())["version"]


async def test_an_ollama_stream_cut_by_its_worker_ends_with_an_error_line(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster()
    await cluster.add_worker("a", tokens=5, die_after=2)
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(cluster.url + "/api/chat", json=body) as resp:
        lines = [json.loads(line) for line in (await resp.read()).decode().splitlines()]
    assert [line["message"]["content"] for line in lines[:2]] == ["a:0 ", "a:1 "]
    assert "failed mid-stream" in lines[2]["error"]
    assert len(lines) == 3
    metrics = await (await http.get(cluster.url + "/metrics")).text()
    assert 'inferno_gateway_stream_errors_total{worker="a"} 1.0' in metrics


async def test_a_continued_response_goes_to_the_worker_that_keeps_it(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = await make_cluster(policy=RoundRobinPolicy())
    await cluster.add_worker("a", tokens=2)
    await cluster.add_worker("b", tokens=2)
    client = _client(cluster.url)
    try:
        first = await client.responses.with_raw_response.create(model="default", input="hi")
        holder = first.headers[WORKER_HEADER]
        rid = first.parse().id
        for _ in range(3):  # round robin would alternate; the conversation pins the worker
            again = await client.responses.with_raw_response.create(
                model="default", input="more", previous_response_id=rid
            )
            assert again.headers[WORKER_HEADER] == holder
        fetched = await client.responses.retrieve(rid)
        assert fetched.id == rid
        await client.responses.delete(rid)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="default", input="x", previous_response_id=rid)
    finally:
        await client.close()
    assert [b.get("previous_response_id") for b in cluster.workers[holder].bodies[1:]] == [rid] * 3
