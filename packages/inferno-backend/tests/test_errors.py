"""Every invalid request gets an OpenAI error body with the right 4xx."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .conftest import MakeClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


async def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_unknown_model_is_404(client: TestClient[Any, Any]) -> None:
    err = await _error(await client.post("/v1/chat/completions", json={**CHAT, "model": "x"}), 404)
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"


async def test_bad_json_is_400(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    err = await _error(resp, 400)
    assert err["code"] == "invalid_json"


async def test_non_object_body_is_400(client: TestClient[Any, Any]) -> None:
    err = await _error(await client.post("/v1/completions", json=[1, 2]), 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", "hot", "temperature"),
        ("temperature", 2.5, "temperature"),
        ("top_p", -0.1, "top_p"),
        ("n", 0, "n"),
        ("max_tokens", 0, "max_tokens"),
        ("max_tokens", "5", "max_tokens"),
        ("presence_penalty", 3, "presence_penalty"),
        ("frequency_penalty", -3, "frequency_penalty"),
        ("top_logprobs", 30, "top_logprobs"),
        ("stream", "yes", "stream"),
        ("messages", [], "messages"),
        ("messages", [{"role": "wizard", "content": "x"}], "messages.0.role"),
        ("seed", 1.5, "seed"),
        ("logit_bias", {"5": 101}, "logit_bias"),
        ("logit_bias", {"five": 1}, "logit_bias"),
        ("logit_bias", {"5": "up"}, "logit_bias.5"),
        ("logit_bias", [5, 1], "logit_bias"),
    ],
)
async def test_out_of_range_and_wrong_types_name_the_field(
    client: TestClient[Any, Any], field: str, value: Any, param: str
) -> None:
    err = await _error(await client.post("/v1/chat/completions", json={**CHAT, field: value}), 400)
    assert err["param"] == param
    assert param in err["message"]


async def test_model_level_rules_name_the_field(client: TestClient[Any, Any]) -> None:
    err = await _error(
        await client.post("/v1/chat/completions", json={**CHAT, "top_logprobs": 2}), 400
    )
    assert err["param"] == "top_logprobs"
    err = await _error(
        await client.post("/v1/chat/completions", json={**CHAT, "stop": ["a"] * 5}), 400
    )
    assert err["param"] == "stop"


IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        # Each field takes several shapes; the message is about the shape that was sent.
        ({"stop": ["end", ""]}, "stop.1", "at least 1 character"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function", "Field required"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE_PART]}
                ]
            },
            "messages.0.content.1",
            "'image_url' are not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
            "Field required",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto' or 'required'"),
    ],
)
async def test_fields_with_several_shapes_report_the_sent_one(
    client: TestClient[Any, Any], fields: dict[str, Any], param: str, words: str
) -> None:
    err = await _error(await client.post("/v1/chat/completions", json={**CHAT, **fields}), 400)
    assert err["param"] == param
    assert words in err["message"]
    assert "valid string" not in err["message"]


async def test_cross_field_messages_name_the_field_once(client: TestClient[Any, Any]) -> None:
    err = await _error(
        await client.post(
            "/v1/chat/completions", json={**CHAT, "response_format": {"type": "json_schema"}}
        ),
        400,
    )
    assert err["message"].count("response_format:") == 1


UNENFORCEABLE = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema object"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": UNENFORCEABLE},
                }
            },
            "response_format",
            "pattern",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "string"}},
                }
            },
            "response_format",
            "root must be an object",
        ),
        (
            {"response_format": {"type": "json_object"}, "ignore_eos": True},
            "response_format",
            "ignore_eos",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "json_object"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "response_format": {"type": "json_object"},
            },
            "response_format",
            "tool calls",
        ),
    ],
)
async def test_unsupported_output_shapes_are_refused_not_ignored(
    client: TestClient[Any, Any], fields: dict[str, Any], param: str, words: str
) -> None:
    err = await _error(await client.post("/v1/chat/completions", json={**CHAT, **fields}), 400)
    assert err["param"] == param
    assert words in err["message"]


async def test_tools_with_tool_choice_none_are_served(client: TestClient[Any, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    for extra in ({"tools": tools, "tool_choice": "none"}, {"tools": []}):
        resp = await client.post("/v1/chat/completions", json={**CHAT, **extra})
        assert resp.status == 200, await resp.text()


async def test_missing_model_field(client: TestClient[Any, Any]) -> None:
    err = await _error(
        await client.post("/v1/chat/completions", json={"messages": CHAT["messages"]}), 400
    )
    assert err["param"] == "model"


async def test_prompt_too_long_is_400(make_client: MakeClient) -> None:
    from inferno_backend.testing import FakeModelSource

    client, _ = await make_client(source=FakeModelSource(max_model_len=64))
    err = await _error(
        await client.post("/v1/completions", json={"model": "default", "prompt": "x" * 100}), 400
    )
    assert err["code"] == "context_length_exceeded"
    payload = {"model": "default", "prompt": "x", "max_tokens": 100}
    err = await _error(await client.post("/v1/completions", json=payload), 400)
    assert err["param"] == "max_tokens"
    stream = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "messages": [{"role": "user", "content": "y" * 100}], "stream": True},
    )
    await _error(stream, 400)


async def test_token_ids_outside_vocab_are_400(client: TestClient[Any, Any]) -> None:
    err = await _error(
        await client.post("/v1/completions", json={"model": "default", "prompt": [10**6]}), 400
    )
    assert err["param"] == "prompt"
    batch = {"model": "default", "prompt": [[5], [10**6]]}
    err = await _error(await client.post("/v1/completions", json=batch), 400)
    assert err["param"] == "prompt.1"  # the engine's "prompt", named as the request has it
    biased = {"model": "default", "prompt": "x", "logit_bias": {str(10**6): 5}}
    err = await _error(await client.post("/v1/completions", json=biased), 400)
    assert err["param"] == "logit_bias"
    assert str(10**6) in err["message"]
    twice = {**CHAT, "logit_bias": {"12": 1, "012": 2}}  # one token, spelled two ways
    err = await _error(await client.post("/v1/chat/completions", json=twice), 400)
    assert err["param"] == "logit_bias"


async def test_unknown_route_and_method(client: TestClient[Any, Any]) -> None:
    await _error(await client.get("/v1/nothing"), 404)
    await _error(await client.get("/v1/chat/completions"), 405)


async def test_body_too_large_is_413(make_client: MakeClient) -> None:
    from inferno_backend.config import ServeConfig

    client, _ = await make_client(ServeConfig(warmup=False, max_body_bytes=2048))
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    err = await _error(await client.post("/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"


async def test_integral_numbers_count_as_integers(client: TestClient[Any, Any]) -> None:
    """JSON Schema (and so the OpenAPI description) calls 2.0 an integer; the server agrees."""
    body = {"model": "default", "prompt": [5.0, 6], "max_tokens": 2.0, "n": 1.0, "seed": 7.0}
    resp = await client.post("/v1/completions", json=body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["prompt_tokens"] == 2
    err = await _error(await client.post("/v1/completions", json={**body, "n": 1.5}), 400)
    assert err["param"] == "n"
    err = await _error(await client.post("/v1/completions", json={**body, "prompt": [-1.0]}), 400)
    assert str(err["param"]).startswith("prompt")


def test_openapi_states_the_stop_and_suffix_limits() -> None:
    from inferno_backend.openapi import build_openapi

    schemas = build_openapi()["components"]["schemas"]
    stop = schemas["ChatCompletionRequest"]["properties"]["stop"]["anyOf"]
    assert {"type": "string", "minLength": 1} in stop
    assert {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4} in stop
    suffix = schemas["CompletionRequest"]["properties"]["suffix"]["anyOf"]
    assert {"type": "string", "maxLength": 0} in suffix
    # Bounds are JSON Schema keywords, never pydantic's own names.
    assert '"ge"' not in repr(schemas).replace("'", '"')
