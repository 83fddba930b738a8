"""``POST /v1/responses`` against FakeEngine: the response object, its event stream, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from inferno_backend.config import ServeConfig

from .conftest import MakeClient, scripted

ANSWER = "Hello, I am a fake engine."


def _typed_events(raw: str) -> list[dict[str, Any]]:
    """Each ``event: T`` / ``data: {...}`` pair of the stream, checked to agree on the type."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        head, data = block.split("\n", 1)
        assert head.startswith("event: "), block
        assert data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == head[len("event: ") :]
        events.append(payload)
    return events


async def test_a_string_input_gets_one_completed_message(make_client: MakeClient) -> None:
    client, orch = await make_client()
    resp = await client.post("/v1/responses", json={"model": "default", "input": "Hi"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["object"] == "response"
    assert body["id"].startswith("resp_")
    assert body["status"] == "completed"
    assert body["incomplete_details"] is None
    assert body["max_output_tokens"] is None  # echoed as asked: the context is the limit
    (message,) = body["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"] == ANSWER
    usage = body["usage"]
    assert usage["output_tokens"] == 8
    assert usage["total_tokens"] == usage["input_tokens"] + 8
    request = orch.engines[0].requests[-1]
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


async def test_instructions_and_messages_go_through_the_chat_template(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    body = {
        "model": "default",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Hi"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Hello."}
            ]},
            {"role": "user", "content": [{"type": "input_text", "text": "Again"}]},
        ],
        "max_output_tokens": 3,
        "temperature": 0,
        "metadata": {"k": "v"},
    }  # fmt: skip
    resp = await client.post("/v1/responses", json=body)
    out = await resp.json()
    assert resp.status == 200, out
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["max_output_tokens"] == 3
    assert out["output"][0]["content"][0]["text"] == "Hello, I"
    assert out["output"][0]["status"] == "incomplete"
    assert out["metadata"] == {"k": "v"}
    assert out["instructions"] == "Be brief."
    request = orch.engines[0].requests[-1]
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert request.sampling.max_tokens == 3
    assert request.sampling.temperature == 0


async def test_the_stream_is_the_typed_event_sequence(make_client: MakeClient) -> None:
    client, _ = await make_client()
    resp = await client.post(
        "/v1/responses", json={"model": "default", "input": "Hi", "stream": True}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = _typed_events(await resp.text())
    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(deltas) == ANSWER
    assert events[-4]["text"] == ANSWER
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == ANSWER
    assert final["usage"]["output_tokens"] == 8
    assert events[0]["response"]["status"] == "in_progress"
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {final["output"][0]["id"]}


async def test_a_cut_stream_ends_incomplete(make_client: MakeClient) -> None:
    client, _ = await make_client()
    resp = await client.post(
        "/v1/responses",
        json={"model": "default", "input": "Hi", "stream": True, "max_output_tokens": 2},
    )
    final = _typed_events(await resp.text())[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_json_output_through_text_format(make_client: MakeClient) -> None:
    client, orch = await make_client()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    resp = await client.post(
        "/v1/responses", json={"model": "default", "input": "Hi", "text": {"format": fmt}}
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["text"]["format"]["name"] == "thing"
    sampling = orch.engines[0].requests[-1].sampling
    assert sampling.response_format == "json_schema"
    assert json.loads(sampling.json_schema or "") == schema


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "default"}, "input", "Field required"),
        ({"model": "default", "input": []}, "input", "at least 1 message"),
        (
            {"model": "default", "input": [{"role": "tool", "content": "x"}]},
            "input.0.message.role",
            "",
        ),
        ({"model": "default", "input": [{"type": "image", "url": "x"}]}, "input.0", "tag"),
        ({"model": "default", "input": 3}, "input", "a string or a list of messages"),
        ({"model": "default", "input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type", ""),
        ({"model": "default", "input": "x", "tool_choice": "required"}, None, "needs tools"),
        ({"model": "default", "input": "x", "n": 2}, None, "one answer"),
        ({"model": "default", "input": "x", "max_output_tokens": 0}, "max_output_tokens", ""),
        (
            {"model": "default", "input": "x", "text": {"format": {"type": "json_schema"}}},
            None,
            "needs its schema",
        ),
    ],
)
async def test_bad_bodies_are_400s_naming_the_problem(
    make_client: MakeClient, body: dict[str, Any], param: str | None, message: str
) -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/responses", json=body)
    out = await resp.json()
    assert resp.status == 400, out
    assert out["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert out["error"]["param"] == param
    assert message in out["error"]["message"]


async def test_unknown_model_and_too_long_input(make_client: MakeClient) -> None:
    client, _ = await make_client()
    resp = await client.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert resp.status == 404
    resp = await client.post("/v1/responses", json={"model": "default", "input": "x" * 100_000})
    out = await resp.json()
    assert resp.status == 400
    assert out["error"]["code"] == "context_length_exceeded"
    assert out["error"]["param"] == "input"


async def test_an_engine_failure_mid_stream_is_an_error_event(make_client: MakeClient) -> None:
    client, _ = await make_client(engine_options={"fail_after": 2})
    resp = await client.post("/v1/responses", json={"model": "default", "input": "Hi"})
    assert resp.status == 500
    resp = await client.post(
        "/v1/responses", json={"model": "default", "input": "Hi", "stream": True}
    )
    events = _typed_events(await resp.text())
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "engine_error"
    assert "response.completed" not in [e["type"] for e in events]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'


async def test_a_function_call_comes_back_as_an_output_item(make_client: MakeClient) -> None:
    client, orch = await make_client(**scripted(CALL))
    body = {"model": "default", "input": "Weather in Paris?", "tools": [WEATHER]}
    resp = await client.post("/v1/responses", json=body)
    out = await resp.json()
    assert resp.status == 200, out
    assert out["status"] == "completed"
    (call,) = out["output"]
    assert call["type"] == "function_call"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["call_id"].startswith("call_")
    assert out["tools"][0]["name"] == "get_weather"
    request = orch.engines[0].requests[-1]
    assert request.sampling.response_format == "json_schema"
    assert request.sampling.json_optional  # "auto": text stays possible
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt.startswith("<|im_start|>system\nYou can call these functions")
    assert "get_weather" in prompt
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:tool_calls_total{model="default"} 1.0' in metrics


async def test_calls_and_their_outputs_in_the_input_reach_the_template(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client(**scripted("It is 18 C in Paris."))
    body = {
        "model": "default",
        "tools": [WEATHER],
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
        ],
    }  # fmt: skip
    resp = await client.post("/v1/responses", json=body)
    out = await resp.json()
    assert resp.status == 200, out
    assert out["output"][0]["type"] == "message"
    assert out["output"][0]["content"][0]["text"] == "It is 18 C in Paris."
    request = orch.engines[0].requests[-1]
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert (
        '<|im_start|>assistant\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        "<|im_end|>\n<|im_start|>tool\n18 C<|im_end|>\n"
    ) in prompt


async def test_a_streamed_function_call_is_held_and_sent_as_call_events(
    make_client: MakeClient,
) -> None:
    client, _ = await make_client(**scripted(CALL))
    body = {
        "model": "default",
        "input": "Weather?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "stream": True,
    }
    # A named function: the model writes only the arguments object.
    client2, _ = await make_client(**scripted('{"city": "Rome"}'))
    resp = await client2.post("/v1/responses", json=body)
    events = _typed_events(await resp.text())
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[4]["arguments"] == '{"city": "Rome"}'
    final = events[-1]["response"]
    assert final["output"][0]["name"] == "get_weather"
    assert final["tool_choice"] == {"type": "function", "name": "get_weather"}
    # Under "auto" a text answer is held too, then sent as one message.
    resp = await client.post("/v1/responses", json={**body, "tool_choice": "auto", "input": "Hi"})
    events = _typed_events(await resp.text())
    assert [e["type"] for e in events][-1] == "response.completed"
    assert events[-1]["response"]["output"][0]["type"] == "function_call"
    # A text answer under "auto" streams from its first non-blank character on.
    client3, _ = await make_client(**scripted("  Plain words, no call."))
    resp = await client3.post("/v1/responses", json={**body, "tool_choice": "auto"})
    events = _typed_events(await resp.text())
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["  Plain", " words,", " no cal", "l."]
    text = events[-1]["response"]["output"][0]["content"][0]["text"]
    assert text == "  Plain words, no call."
    # Under "required" text cannot be the answer's start: held to the end, then one delta.
    client4, _ = await make_client(**scripted("Plain words, no call."))
    resp = await client4.post("/v1/responses", json={**body, "tool_choice": "required"})
    events = _typed_events(await resp.text())
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Plain words, no call."]


async def test_logprobs_come_with_the_output_text_when_included(make_client: MakeClient) -> None:
    client, orch = await make_client()
    body = {
        "model": "default",
        "input": "Hi",
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    out = await (await client.post("/v1/responses", json=body)).json()
    part = out["output"][0]["content"][0]
    assert len(part["logprobs"]) == 8  # one per output token
    assert all(isinstance(t["logprob"], float) and t["logprob"] <= 0 for t in part["logprobs"])
    assert all(len(t["top_logprobs"]) == 2 for t in part["logprobs"])
    assert orch.engines[0].requests[-1].sampling.logprobs == 2
    plain = await (
        await client.post("/v1/responses", json={"model": "default", "input": "Hi"})
    ).json()
    assert plain["output"][0]["content"][0]["logprobs"] == []
    assert orch.engines[0].requests[-1].sampling.logprobs is None
    events = _typed_events(
        await (await client.post("/v1/responses", json={**body, "stream": True})).text()
    )
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    streamed = [t for e in deltas for t in e["logprobs"]]
    assert [t["token"] for t in streamed] == [t["token"] for t in part["logprobs"]]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["logprobs"] == streamed


async def test_logprobs_leave_out_the_end_of_turn_token(make_client: MakeClient) -> None:
    client, _orch = await make_client(engine_options={"end_token_id": 2})
    body = {"model": "default", "input": "Hi", "include": ["message.output_text.logprobs"]}
    out = await (await client.post("/v1/responses", json=body)).json()
    part = out["output"][0]["content"][0]
    assert len(part["logprobs"]) == 8  # one per piece of the script: the end token has none
    assert out["usage"]["output_tokens"] == 9


async def test_previous_response_id_continues_the_conversation(make_client: MakeClient) -> None:
    client, orch = await make_client()
    first = await (
        await client.post(
            "/v1/responses",
            json={"model": "default", "input": "Hi", "instructions": "Be brief."},
        )
    ).json()
    assert first["store"] is True
    follow = {"model": "default", "input": "Again", "previous_response_id": first["id"]}
    second = await (await client.post("/v1/responses", json=follow)).json()
    assert second["previous_response_id"] == first["id"]
    tokenizer = orch.get("default").model.tokenizer
    prompt = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    # The earlier turn and its answer come first; its instructions do not carry over.
    assert prompt == (
        f"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    )
    third = {"model": "default", "input": "More", "previous_response_id": second["id"]}
    await client.post("/v1/responses", json={**third, "instructions": "Now verbose."})
    prompt = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    assert prompt.startswith("<|im_start|>system\nNow verbose.<|im_end|>\n<|im_start|>user\nHi")
    assert prompt.count(ANSWER) == 2


async def test_kept_responses_are_retrieved_and_deleted(make_client: MakeClient) -> None:
    client, _orch = await make_client()
    made = await (
        await client.post("/v1/responses", json={"model": "default", "input": "Hi"})
    ).json()
    fetched = await client.get(f"/v1/responses/{made['id']}")
    assert fetched.status == 200
    assert await fetched.json() == made
    gone = await client.delete(f"/v1/responses/{made['id']}")
    assert (await gone.json()) == {"id": made["id"], "object": "response", "deleted": True}
    for resp in (
        await client.get(f"/v1/responses/{made['id']}"),
        await client.delete(f"/v1/responses/{made['id']}"),
        await client.post(
            "/v1/responses",
            json={"model": "default", "input": "x", "previous_response_id": made["id"]},
        ),
    ):
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "response_not_found"
    unkept = await (
        await client.post("/v1/responses", json={"model": "default", "input": "x", "store": False})
    ).json()
    assert unkept["store"] is False
    assert (await client.get(f"/v1/responses/{unkept['id']}")).status == 404


async def test_a_streamed_response_is_kept_as_it_completed(make_client: MakeClient) -> None:
    client, _orch = await make_client()
    resp = await client.post(
        "/v1/responses", json={"model": "default", "input": "Hi", "stream": True}
    )
    completed = _typed_events(await resp.text())[-1]
    assert completed["type"] == "response.completed"
    kept = await (await client.get(f"/v1/responses/{completed['response']['id']}")).json()
    assert kept == completed["response"]


async def test_the_store_keeps_the_most_recently_used(make_client: MakeClient) -> None:
    client, _orch = await make_client(ServeConfig(warmup=False, responses_kept=2))
    ids = []
    for text in ("a", "b"):
        made = await (
            await client.post("/v1/responses", json={"model": "default", "input": text})
        ).json()
        ids.append(made["id"])
    assert (await client.get(f"/v1/responses/{ids[0]}")).status == 200  # now the newest used
    await client.post("/v1/responses", json={"model": "default", "input": "c"})
    assert (await client.get(f"/v1/responses/{ids[0]}")).status == 200
    assert (await client.get(f"/v1/responses/{ids[1]}")).status == 404
    none, _ = await make_client(ServeConfig(warmup=False, responses_kept=0))
    made = await (await none.post("/v1/responses", json={"model": "default", "input": "a"})).json()
    assert made["store"] is False


async def test_a_function_call_and_its_output_continue_by_id(make_client: MakeClient) -> None:
    client, orch = await make_client(**scripted(CALL))
    tools = [WEATHER]
    made = await (
        await client.post(
            "/v1/responses", json={"model": "default", "input": "Weather?", "tools": tools}
        )
    ).json()
    (call,) = made["output"]
    assert call["type"] == "function_call"
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    follow = {
        "model": "default",
        "input": [result],
        "tools": tools,
        "previous_response_id": made["id"],
    }
    assert (await client.post("/v1/responses", json=follow)).status == 200
    tokenizer = orch.get("default").model.tokenizer
    prompt = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    assert "<|im_start|>user\nWeather?<|im_end|>" in prompt
    assert '[{"name": "get_weather", "arguments": {"city": "Paris"}}]' in prompt
    assert "<|im_start|>tool\nsunny<|im_end|>" in prompt
