"""Tool calls: the plan (prompt, schema, parsing), streaming deltas, and the chat route."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from aiohttp.test_utils import TestClient
from inferno_backend.api.schemas import ChatCompletionRequest, ChatMessage, Tool
from inferno_backend.api.tools import ToolCallStream, ToolPlan, conversation, plan_tools

from .conftest import MakeClient, scripted

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "pattern": "^(?=[A-Z])"},
                "unit": {"enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now"}}  # no parameters
TOOLS = [WEATHER, CLOCK]
CHAT: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}
PARIS = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
CALL = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}


def _tools(*tools: dict[str, Any]) -> list[Tool]:
    return [Tool.model_validate(t) for t in tools]


def _plan(choice: str | None = "auto", *, parallel: bool = True) -> ToolPlan:
    plan = plan_tools(_tools(*TOOLS), choice, parallel=parallel)
    assert plan is not None
    return plan


def test_no_plan_without_tools_or_with_choice_none() -> None:
    assert plan_tools([], "auto") is None
    assert plan_tools(_tools(WEATHER), "none") is None


@pytest.mark.parametrize("parallel", [True, False])
def test_required_and_auto_answers_are_arrays_of_calls(parallel: bool) -> None:
    plan = _plan("required", parallel=parallel)
    assert not plan.optional
    assert _plan("auto").optional
    validator = jsonschema_rs.validator_for(plan.schema)
    two = [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}},
        {"name": "now", "arguments": {}},
    ]
    assert validator.is_valid(two) is parallel
    assert validator.is_valid(two[:1])
    assert not validator.is_valid([])
    assert not validator.is_valid([{"name": "now", "arguments": {"x": 1}}])
    assert not validator.is_valid([{"name": "get_weather", "arguments": {}}])
    # A non-strict tool loses the checks JSON mode cannot make (the pattern), and keeps the
    # others (minLength).
    assert validator.is_valid([{"name": "get_weather", "arguments": {"city": "paris"}}])
    assert not validator.is_valid([{"name": "get_weather", "arguments": {"city": ""}}])


def test_strict_tools_keep_their_schema_and_named_calls_are_the_arguments() -> None:
    strict = json.loads(json.dumps(WEATHER))
    strict["function"]["strict"] = True
    plan = plan_tools(_tools(strict, CLOCK), "get_weather")
    assert plan is not None
    assert plan.named == "get_weather"
    assert plan.schema == strict["function"]["parameters"]  # the pattern kept


def test_value_checks_are_dropped_where_schemas_stand_only() -> None:
    params = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "pattern": "^a"},  # a property named like a keyword
            "n": {"anyOf": [{"type": "integer", "multipleOf": 2}, {"type": "null"}]},
            "m": {"type": "integer", "minimum": 1, "exclusiveMinimum": True},  # draft 4
            "xs": {"type": "array", "items": {"$ref": "#/$defs/x"}, "uniqueItems": True},
        },
        "$defs": {"x": {"type": "string", "format": "date"}},
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    plan = plan_tools(_tools(tool), "required")
    assert plan is not None
    args = plan.schema["items"]["anyOf"][0]["properties"]["arguments"]
    assert args["properties"]["pattern"] == {"type": "string"}
    assert args["properties"]["n"]["anyOf"][0] == {"type": "integer"}
    assert args["properties"]["m"] == {"type": "integer", "minimum": 1}
    assert "uniqueItems" not in args["properties"]["xs"]
    assert args["$defs"]["x"] == {"type": "string"}
    # Local references now point into the larger schema, and resolve there.
    assert args["properties"]["xs"]["items"]["$ref"] == (
        "#/items/anyOf/0/properties/arguments/$defs/x"
    )
    validator = jsonschema_rs.validator_for(plan.schema)
    assert validator.is_valid([{"name": "f", "arguments": {"xs": ["a"]}}])
    assert not validator.is_valid([{"name": "f", "arguments": {"xs": [1]}}])


def test_calls_are_read_from_finished_answers() -> None:
    plan = _plan()
    assert plan.calls(" " + PARIS + "\n") == [("get_weather", '{"city": "Paris"}')]
    assert plan.calls("Paris is sunny.") is None
    assert plan.calls("[1, 2]") is None
    assert plan.calls('[{"name": "get_weather"') is None  # cut short
    named = _plan("get_weather")
    assert named.calls('{"city": "Rome"}') == [("get_weather", '{"city": "Rome"}')]
    assert named.calls("[]") is None


def test_instructions_describe_every_tool_and_the_format() -> None:
    text = _plan("auto", parallel=False).instructions()
    assert '"name": "get_weather"' in text
    assert "The weather in a city." in text
    assert '"name": "now"' in text
    assert "plain text" in text
    assert "at most one call" in text
    assert "Call get_weather" in _plan("get_weather").instructions()
    assert "plain text" not in _plan("required").instructions()


def test_conversation_puts_tools_first_and_writes_earlier_calls_as_arrays() -> None:
    messages = [
        ChatMessage.model_validate(m)
        for m in (
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        )
    ]
    plan = _plan()
    out = conversation(messages, plan)
    assert out[0]["role"] == "system"
    assert out[0]["content"].startswith("Be brief.\n\n")
    assert plan.instructions() in out[0]["content"]
    assert json.loads(out[2]["content"]) == json.loads(PARIS)
    assert out[3] == {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1"}
    # Without a system message, the tools get one; without a plan, nothing is added.
    assert conversation(messages[1:], plan)[0] == {
        "role": "system",
        "content": plan.instructions(),
    }
    assert conversation(messages[1:2], None) == [{"role": "user", "content": "Weather in Paris?"}]


def _stream(plan: ToolPlan, pieces: list[str], finish: str) -> list[tuple[dict[str, Any], Any]]:
    stream = ToolCallStream(plan)
    return [
        stream.push(piece, finish if i == len(pieces) - 1 else None)
        for i, piece in enumerate(pieces)
    ]


def test_stream_of_a_named_call_sends_arguments_as_they_come() -> None:
    out = _stream(_plan("get_weather"), ['{"city"', ': "Rome"', "}"], "stop")
    first = out[0][0]["tool_calls"][0]
    assert first["index"] == 0
    assert first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": '{"city"'}
    assert out[1] == ({"tool_calls": [{"index": 0, "function": {"arguments": ': "Rome"'}}]}, None)
    assert out[2][1] == "tool_calls"


def test_stream_of_an_array_is_sent_whole_at_the_end() -> None:
    pieces = ["[", '{"name": "now", "arguments": {}}', ", ", PARIS[1:]]
    out = _stream(_plan("required"), pieces, "stop")
    assert [delta for delta, _ in out[:-1]] == [{}, {}, {}]
    delta, finish = out[-1]
    assert finish == "tool_calls"
    calls = delta["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["now", "get_weather"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Paris"}
    assert len({c["id"] for c in calls}) == 2
    # Cut short by max_tokens: what was written comes back as text.
    assert _stream(_plan("required"), ["[", '{"name": "now"'], "length")[-1] == (
        {"content": '[{"name": "now"'},
        "length",
    )


def test_stream_under_auto_passes_text_through_once_it_is_not_a_call() -> None:
    out = _stream(_plan(), ["\n", " Sunny", " today", ""], "stop")
    assert out == [
        ({}, None),
        ({"content": "\n Sunny"}, None),
        ({"content": " today"}, None),
        ({}, "stop"),
    ]


def test_request_validation() -> None:
    def check(**fields: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({**CHAT, **fields})

    named = {"type": "function", "function": {"name": "now"}}
    assert check(tools=TOOLS, tool_choice=named).tool_plan is not None
    assert check(tools=TOOLS).optional_output  # auto by default
    assert check(tools=TOOLS, tool_choice="required").output_format[0] == "json_schema"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": TOOLS, "tool_choice": {**named, "function": {"name": "x"}}}, "not one of"),
        ({"tools": [CLOCK, CLOCK]}, "same name"),
        ({"tools": TOOLS, "ignore_eos": True}, "ignore_eos"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "pattern"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "schema of an object",
        ),
        ({"messages": [{"role": "user", "tool_calls": [CALL]}], "tools": TOOLS}, "tool_calls"),
    ]
    for fields, words in bad:
        with pytest.raises(ValueError, match=words):
            check(**fields)


# -- the route, over the fake engine ---------------------------------------------------------


async def test_route_returns_tool_calls_and_sends_the_schema(make_client: MakeClient) -> None:
    client, orch = await make_client(**scripted(PARIS))
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "tools": TOOLS, "tool_choice": "required"}
    )
    body = await resp.json()
    assert resp.status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    request = orch.engines[0].requests[-1]
    sp = request.sampling
    assert (sp.response_format, sp.json_optional) == ("json_schema", False)
    assert sp.json_schema is not None
    assert json.loads(sp.json_schema) == _plan("required").schema
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt.startswith("<|im_start|>system\nYou can call these functions")
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:tool_calls_total{model="default"} 1.0' in metrics
    assert 'inferno:structured_requests_total{kind="tools",model="default"} 1.0' in metrics


async def test_route_answers_in_text_when_the_model_does_not_call(make_client: MakeClient) -> None:
    client, orch = await make_client(**scripted("It is sunny."))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "tools": TOOLS})
    body = await resp.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert orch.engines[0].requests[-1].sampling.json_optional
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:tool_calls_total{model="default"}' not in metrics  # a text answer


async def test_route_streams_a_named_call(make_client: MakeClient) -> None:
    client, _ = await make_client(**scripted('{"city": "Rome"}'))
    named = {"type": "function", "function": {"name": "get_weather"}}
    resp = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "tools": TOOLS, "tool_choice": named, "stream": True},
    )
    events = [
        json.loads(line[6:])
        for line in (await resp.text()).splitlines()
        if line.startswith("data: {")
    ]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": None}
    arguments = "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d
    )
    assert arguments == '{"city": "Rome"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:tool_calls_total{model="default"} 1.0' in metrics


async def test_route_names_the_tool_whose_strict_schema_cannot_be_enforced(
    client: TestClient[Any, Any],
) -> None:
    strict = json.loads(json.dumps(WEATHER))
    strict["function"]["strict"] = True
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "tools": [CLOCK, strict], "tool_choice": "required"}
    )
    err = (await resp.json())["error"]
    assert resp.status == 400
    assert err["param"] == "tools"
    assert err["message"].startswith("tools[1].function.parameters.properties.city.pattern:")
    assert "pattern" in err["message"]
    # The same tool, not strict, is served.
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "tools": [CLOCK, WEATHER], "tool_choice": "required"}
    )
    assert resp.status == 200
