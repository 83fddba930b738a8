"""``POST /v1/embeddings`` against FakeEngine: input forms, encodings, dimensions, errors,
cancellation, metrics, and the official openai client."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from inferno_backend.events import EngineFailed, RequestFinished
from inferno_backend.testing import FakeModelSource
from inferno_inference import EmbeddingRequest, Pooling
from inferno_inference.testing import fake_embedding

from .conftest import MakeClient

#: The fake model's hidden size (`tiny_config`) and FakeEngine's vector length.
HIDDEN = 64


def _ids(text: str) -> list[int]:
    """What the byte tokenizer makes of ``text`` with special tokens: BOS, then byte + 3."""
    return [1, *(b + 3 for b in text.encode())]


def _expected(ids: list[int], pooling: Pooling = "mean") -> list[float]:
    return list(fake_embedding(EmbeddingRequest("x", tuple(ids), pooling), HIDDEN))


async def _embed(client: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    resp = await client.post("/v1/embeddings", json={"model": "default", **fields})
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def _error(client: TestClient[Any, Any], status: int, **fields: Any) -> dict[str, Any]:
    resp = await client.post("/v1/embeddings", json={"model": "default", **fields})
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return dict(error)


async def _until(condition: Any, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not met")


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("Hi", [_ids("Hi")]),
        (["Hi", "there", "Hi"], [_ids("Hi"), _ids("there"), _ids("Hi")]),
        ([5, 6, 7], [[5, 6, 7]]),
        ([[5, 6], [7], [300, 40000]], [[5, 6], [7], [300, 40000]]),
    ],
)
async def test_each_input_form_embeds_each_input(
    make_client: MakeClient, value: Any, inputs: list[list[int]]
) -> None:
    client, orch = await make_client()
    body = await _embed(client, input=value)
    assert body["object"] == "list"
    assert body["model"] == "default"
    assert [d["index"] for d in body["data"]] == list(range(len(inputs)))
    assert {d["object"] for d in body["data"]} == {"embedding"}
    for d, ids in zip(body["data"], inputs, strict=True):
        assert d["embedding"] == pytest.approx(_expected(ids), abs=1e-12)
    tokens = sum(len(ids) for ids in inputs)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    engine = orch.engines[0]
    assert sorted(list(r.prompt_token_ids) for r in engine.embeddings) == sorted(inputs)
    assert {r.normalize for r in engine.embeddings} == {True}
    assert {r.pooling for r in engine.embeddings} == {"mean"}
    assert len({r.request_id for r in engine.embeddings}) == len(inputs)
    assert all(r.request_id.startswith("embd-") for r in engine.embeddings)


async def test_text_is_tokenized_as_completions_tokenize_it(client: TestClient[Any, Any]) -> None:
    tokens = (
        await (await client.post("/tokenize", json={"model": "default", "prompt": "Zoë"})).json()
    )["tokens"]
    by_text = await _embed(client, input="Zoë")
    by_ids = await _embed(client, input=tokens)
    assert by_text["data"][0]["embedding"] == by_ids["data"][0]["embedding"]
    assert by_text["usage"]["prompt_tokens"] == len(tokens)
    other = await _embed(client, input="Zoe")
    assert other["data"][0]["embedding"] != by_text["data"][0]["embedding"]


async def test_vectors_are_unit_length(client: TestClient[Any, Any]) -> None:
    body = await _embed(client, input=["a", "a longer sentence"])
    body["data"] += (await _embed(client, input=[[7, 8, 9, 10]]))["data"]
    for d in body["data"]:
        assert len(d["embedding"]) == HIDDEN
        assert math.sqrt(sum(v * v for v in d["embedding"])) == pytest.approx(1.0, abs=1e-9)


async def test_base64_is_the_little_endian_float32_of_the_floats(
    client: TestClient[Any, Any],
) -> None:
    inputs = ["Hi", "there"]
    floats = await _embed(client, input=inputs)
    packed = await _embed(client, input=inputs, encoding_format="base64")
    assert packed["usage"] == floats["usage"]
    for f, b in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(b["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (HIDDEN,)
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))


async def test_dimensions_keeps_a_unit_length_prefix(client: TestClient[Any, Any]) -> None:
    full = (await _embed(client, input="Hi"))["data"][0]["embedding"]
    short = (await _embed(client, input="Hi", dimensions=8))["data"][0]["embedding"]
    assert len(short) == 8
    assert math.sqrt(sum(v * v for v in short)) == pytest.approx(1.0, abs=1e-9)
    scale = math.sqrt(sum(v * v for v in full[:8]))
    assert short == pytest.approx([v / scale for v in full[:8]], abs=1e-12)
    assert scale < 1  # so the rescaling did something
    packed = await _embed(client, input="Hi", dimensions=8, encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(short, dtype=np.float32))
    same = (await _embed(client, input="Hi", dimensions=HIDDEN))["data"][0]["embedding"]
    assert same == full
    err = await _error(client, 400, input="Hi", dimensions=HIDDEN + 1)
    assert err["param"] == "dimensions"
    assert str(HIDDEN) in err["message"]


async def test_last_token_pooling_is_passed_to_the_engine(make_client: MakeClient) -> None:
    client, orch = await make_client()
    last = (await _embed(client, input=[5, 6, 7], pooling="last"))["data"][0]["embedding"]
    assert last == pytest.approx(_expected([5, 6, 7], "last"), abs=1e-12)
    assert last == pytest.approx(_expected([7], "mean"), abs=1e-12)
    assert last != pytest.approx(_expected([5, 6, 7], "mean"), abs=1e-3)
    assert orch.engines[0].embeddings[-1].pooling == "last"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": ["a", [1]]}, "input"),
        ({"input": 5}, "input"),
        ({"input": None}, "input"),
        ({"input": True}, "input"),
        ({"input": {"text": "a"}}, "input"),
        ({"input": [True]}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": [[1], [-1]]}, "input"),
        ({"input": [[1], ["a"]]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": [[1]] * 2049}, "input"),
        ({}, "input"),
        ({"input": "a", "model": 5}, "model"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": 1.5}, "dimensions"),
        ({"input": "a", "dimensions": "8"}, "dimensions"),
        ({"input": "a", "pooling": "max"}, "pooling"),
        ({"input": "a", "user": 5}, "user"),
    ],
)
async def test_invalid_bodies_are_400s_naming_the_field(
    make_client: MakeClient, fields: dict[str, Any], param: str
) -> None:
    client, orch = await make_client()
    err = await _error(client, 400, **fields)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(f"{param}: ")
    assert orch.engines[0].embeddings == []


async def test_input_messages_say_what_is_wrong(client: TestClient[Any, Any]) -> None:
    assert "empty" in (await _error(client, 400, input=["a", ""]))["message"]
    assert "item 1" in (await _error(client, 400, input=["a", ""]))["message"]
    assert "2048" in (await _error(client, 400, input=["a"] * 2049))["message"]
    assert "one form" in (await _error(client, 400, input=[1, "a"]))["message"]


async def test_limits_and_integral_numbers_are_accepted(client: TestClient[Any, Any]) -> None:
    body = await _embed(client, input=["a"] * 2048, dimensions=4.0, user="u")
    assert len(body["data"]) == 2048
    assert {len(d["embedding"]) for d in body["data"]} == {4}
    assert len((await _embed(client, input=[5.0, 6]))["data"]) == 1


async def test_token_ids_outside_the_vocabulary_are_400s(client: TestClient[Any, Any]) -> None:
    err = await _error(client, 400, input=[5, 10**6])
    assert err["param"] == "input"
    assert err["code"] == "invalid_value"
    assert str(10**6) in err["message"]
    err = await _error(client, 400, input=[[5], [10**6]])
    assert err["param"] == "input.1"


async def test_inputs_longer_than_the_context_are_400s(make_client: MakeClient) -> None:
    client, _ = await make_client(source=FakeModelSource(max_model_len=64))
    assert len((await _embed(client, input="x" * 63))["data"]) == 1  # BOS + 63 fit
    err = await _error(client, 400, input="x" * 64)
    assert err["code"] == "context_length_exceeded"
    assert err["param"] == "input"
    err = await _error(client, 400, input=["short", "x" * 100])
    assert err["code"] == "context_length_exceeded"
    assert err["param"] == "input.1"
    err = await _error(client, 400, input=[[3] * 65])
    assert err["param"] == "input.0"


async def test_unknown_model_is_404(client: TestClient[Any, Any]) -> None:
    err = await _error(client, 404, model="nope", input="a")
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"


async def test_engine_failure_is_a_500_and_reported(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"fail_after": 0})
    failures: list[EngineFailed] = []
    orch.bus.subscribe(EngineFailed, failures.append)
    err = await _error(client, 500, input=["a", "b"])
    assert err["code"] == "engine_error"
    assert err["type"] == "server_error"
    assert "scripted failure" in err["message"]
    assert len(failures) == 1
    assert str(failures[0].request_id).startswith("embd-")
    text = await (await client.get("/metrics")).text()
    assert 'inferno:embedding_requests_total{model="default",outcome="error"} 1.0' in text
    assert orch.inflight == 0


async def test_a_stopped_engine_is_a_503(make_client: MakeClient) -> None:
    client, orch = await make_client()
    await orch.engines[0].shutdown()
    err = await _error(client, 503, input="a")
    assert err["type"] == "service_unavailable"
    text = await (await client.get("/metrics")).text()
    assert 'inferno:embedding_requests_total{model="default",outcome="unavailable"} 1.0' in text


async def test_metrics_and_request_finished(make_client: MakeClient) -> None:
    client, orch = await make_client()
    seen: list[RequestFinished] = []
    orch.bus.subscribe(RequestFinished, seen.append)
    await _embed(client, input=["Hi", "there"])  # 3 + 6 tokens
    await _error(client, 400, input=[10**6])
    assert [e.finish_reasons for e in seen] == [("stop",), ("abort",)]
    assert seen[0].request_id.startswith("embd-")
    assert seen[0].prompt_tokens == 9
    assert seen[0].completion_tokens == 0
    text = await (await client.get("/metrics")).text()
    assert 'inferno:embedding_requests_total{model="default",outcome="success"} 1.0' in text
    assert 'inferno:embedding_requests_total{model="default",outcome="invalid"} 1.0' in text
    assert 'inferno:prompt_tokens_total{model="default"} 10.0' in text
    # The latency of the one success only; the rejected request is not a latency sample.
    assert 'inferno:embedding_request_latency_seconds_count{model="default"} 1.0' in text
    assert "inferno:request_success_total{" not in text  # no generation was counted
    assert 'inferno:http_requests_total{route="/v1/embeddings",status="200"} 1.0' in text


async def test_one_failing_input_cancels_the_others(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"first_token_delay": 5.0})
    engine = orch.engines[0]
    err = await _error(client, 400, input=[[5], [10**6], [6]])  # answered without the delay
    assert err["param"] == "input.1"
    await _until(lambda: not engine._embedding_live)
    submitted = [r.request_id for r in engine.embeddings]
    assert len(submitted) == 2  # the invalid one was refused before it was accepted
    assert sorted(engine.aborted) == sorted(submitted)
    assert orch.inflight == 0


async def test_client_disconnect_aborts_the_engine_requests(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"first_token_delay": 30.0})
    engine = orch.engines[0]
    url = client.make_url("/v1/embeddings")
    async with ClientSession() as session:
        post = asyncio.create_task(
            session.post(url, json={"model": "default", "input": ["a", "b", "c"]})
        )
        await _until(lambda: len(engine._embedding_live) == 3)
        post.cancel()
        with pytest.raises(asyncio.CancelledError):
            await post
    await _until(lambda: not engine._embedding_live)
    assert sorted(engine.aborted) == sorted(r.request_id for r in engine.embeddings)
    assert len(engine.aborted) == 3
    await _until(lambda: orch.inflight == 0)
    text = await (await client.get("/metrics")).text()
    assert 'inferno:embedding_requests_total{model="default",outcome="abort"} 1.0' in text


async def test_the_openai_client_gets_what_it_asks_for(client: TestClient[Any, Any]) -> None:
    raw = await _embed(client, input=["Hi", "there"])
    oai = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    try:
        # No encoding_format: the client asks for base64 and decodes it with numpy.
        default = await oai.embeddings.create(model="default", input=["Hi", "there"])
        assert default.model == "default"
        assert default.usage.prompt_tokens == raw["usage"]["prompt_tokens"]
        assert [d.index for d in default.data] == [0, 1]
        for got, want in zip(default.data, raw["data"], strict=True):
            assert got.embedding == np.asarray(want["embedding"], dtype=np.float32).tolist()
        floats = await oai.embeddings.create(
            model="default", input=[5, 6, 7], encoding_format="float", dimensions=16
        )
        assert len(floats.data[0].embedding) == 16
        assert math.sqrt(sum(v * v for v in floats.data[0].embedding)) == pytest.approx(1.0)
        with pytest.raises(openai.BadRequestError) as info:
            await oai.embeddings.create(model="default", input="", encoding_format="float")
        assert info.value.status_code == 400
        with pytest.raises(openai.NotFoundError):
            await oai.embeddings.create(model="nope", input="a")
    finally:
        await oai.close()


def test_the_route_is_in_the_openapi_description() -> None:
    from inferno_backend.openapi import build_openapi

    doc = build_openapi()
    operation = doc["paths"]["/v1/embeddings"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingsRequest"
    }
    props = doc["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert set(props) == {"model", "input", "encoding_format", "dimensions", "user", "pooling"}
    assert {"type": "string", "minLength": 1} in props["input"]["anyOf"]
