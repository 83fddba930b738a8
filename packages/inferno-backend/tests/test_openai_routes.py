"""The OpenAI routes against FakeEngine: bodies, streaming, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from inferno_backend.config import ServeConfig
from inferno_backend.events import RequestFinished

from .conftest import MakeClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def _events(raw: str) -> list[Any]:
    out: list[Any] = []
    for line in raw.split("\n\n"):
        if not line.strip():
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_models_lists_the_served_model(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["default"]
    assert body["data"][0]["object"] == "model"


async def test_models_retrieves_one_model_or_404s(client: TestClient[Any, Any]) -> None:
    listed = (await (await client.get("/v1/models")).json())["data"][0]
    resp = await client.get("/v1/models/default")
    assert resp.status == 200
    assert await resp.json() == listed
    missing = await client.get("/v1/models/nope")
    assert missing.status == 404
    error = (await missing.json())["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "nope" in error["message"]


async def test_chat_completion_returns_text_usage_and_finish_reason(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello, I am a fake engine.",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert resp.headers["X-Request-Id"]


async def test_chat_uses_the_template_and_max_tokens(make_client: MakeClient) -> None:
    client, orch = await make_client()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "n": 2})
    body = await resp.json()
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "length"]
    assert body["choices"][1]["message"]["content"] == "Hello, I"
    engine = orch.engines[0]
    request = engine.requests[-1]
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert request.sampling.max_tokens == 3
    assert request.sampling.n == 2


async def test_sampling_fields_reach_the_engine(make_client: MakeClient) -> None:
    client, orch = await make_client()
    fields = {
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["fake"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "max_completion_tokens": 20,
        "logit_bias": {"9": -100, "3": 2.5},
        "response_format": {"type": "json_object"},
    }
    resp = await client.post("/v1/chat/completions", json={**CHAT, **fields})
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "Hello, I am a "
    assert body["choices"][0]["finish_reason"] == "stop"
    sp = orch.engines[0].requests[-1].sampling
    assert (sp.temperature, sp.top_p, sp.seed, sp.stop) == (0.5, 0.9, 7, ("fake",))
    assert (sp.presence_penalty, sp.frequency_penalty, sp.max_tokens) == (0.5, -0.5, 20)
    assert sp.logit_bias == ((3, 2.5), (9, -100.0))
    assert sp.response_format == "json_object"


async def test_json_schema_reaches_the_engine_as_text(make_client: MakeClient) -> None:
    client, orch = await make_client()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt})
    assert resp.status == 200, await resp.text()
    sp = orch.engines[0].requests[-1].sampling
    assert sp.response_format == "json_schema"
    assert sp.json_schema is not None
    assert json.loads(sp.json_schema) == schema
    fmt = {"type": "json_schema", "json_schema": {"name": "any"}}  # no schema: any object
    resp = await client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt})
    assert resp.status == 200
    sp = orch.engines[0].requests[-1].sampling
    assert (sp.response_format, sp.json_schema) == ("json_object", None)


async def test_chat_logprobs(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2}
    )
    body = await resp.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 8
    assert len(content[0]["top_logprobs"]) == 2
    assert isinstance(content[0]["bytes"], list)


async def test_chat_stream_sends_role_deltas_usage_and_done(client: TestClient[Any, Any]) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = _events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello, I am a fake engine."
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_completion_with_batch_and_echo(client: TestClient[Any, Any]) -> None:
    payload = {"model": "default", "prompt": ["ab", "cd"], "max_tokens": 2, "echo": True}
    resp = await client.post("/v1/completions", json=payload)
    body = await resp.json()
    assert resp.status == 200, body
    assert [c["text"] for c in body["choices"]] == ["abHello,", "cdHello,"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == 6  # BOS + 2 bytes, twice


async def test_completion_token_ids_logprobs_and_stream(client: TestClient[Any, Any]) -> None:
    payload = {"model": "default", "prompt": [5, 6, 7], "logprobs": 1, "stream": True}
    resp = await client.post("/v1/completions", json=payload)
    events = _events(await resp.text())
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hello, I am a fake engine."
    assert events[0]["choices"][0]["logprobs"]["tokens"] == [
        events[0]["choices"][0]["logprobs"]["tokens"][0]
    ]
    assert events[0]["object"] == "text_completion"


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ({"text": "hi"}, "must be a string, a list of strings, a list of token ids"),
        ("", "must not be an empty string"),
        ([], "must not be an empty list"),
        ([1, "a"], "mixes strings, token ids and lists"),
        ([5, -1], "token ids are integers >= 0"),
        ([[5], []], "item 1 is empty"),
        (["a"] * 65, "at most 64 prompts, got 65"),
    ],
)
async def test_a_malformed_prompt_is_a_400_naming_the_problem(
    client: TestClient[Any, Any], prompt: object, problem: str
) -> None:
    resp = await client.post("/v1/completions", json={"model": "default", "prompt": prompt})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["param"] == "prompt"
    assert body["error"]["message"].startswith(f"prompt: {problem}")
    assert "more problem" not in body["error"]["message"]  # one problem, not four forms'


async def test_default_completion_budget_is_16_tokens(make_client: MakeClient) -> None:
    client, _orch = await make_client(engine_options={"script": ["x"] * 40})
    body = await (
        await client.post("/v1/completions", json={"model": "default", "prompt": "a"})
    ).json()
    assert body["choices"][0]["text"] == "x" * 16
    assert body["choices"][0]["finish_reason"] == "length"


async def test_request_finished_event_and_metrics(make_client: MakeClient) -> None:
    client, orch = await make_client()
    seen: list[RequestFinished] = []
    orch.bus.subscribe(RequestFinished, seen.append)
    await client.post("/v1/chat/completions", json=CHAT)
    assert seen
    assert seen[0].finish_reasons == ("stop",)
    assert seen[0].completion_tokens == 8
    text = await (await client.get("/metrics")).text()
    assert 'inferno:generation_tokens_total{model="default"} 8.0' in text
    assert 'inferno:time_to_first_token_seconds_count{model="default"} 1.0' in text
    assert 'inferno:e2e_request_latency_seconds_count{model="default"} 1.0' in text
    assert 'inferno:num_requests_running{model="default"} 0.0' in text
    assert 'inferno:spec_decode_draft_tokens_total{model="default"} 0.0' in text
    assert 'inferno:spec_decode_accepted_tokens_total{model="default"} 0.0' in text
    assert 'inferno:memory_pool_bytes{kind="current",model="default"}' in text
    assert "inferno:structured_requests_total{" not in text  # plain text was asked for
    await client.post(
        "/v1/chat/completions", json={**CHAT, "response_format": {"type": "json_object"}}
    )
    text = await (await client.get("/metrics")).text()
    assert 'inferno:structured_requests_total{kind="json_object",model="default"} 1.0' in text


async def test_queue_time_counts_the_wait_inside_the_engine(make_client: MakeClient) -> None:
    client, _ = await make_client(engine_options={"max_num_seqs": 1, "token_delay": 0.02})
    await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT) for _ in range(2)))
    text = await (await client.get("/metrics")).text()
    assert 'inferno:request_queue_time_seconds_count{model="default"} 2.0' in text
    total = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('inferno:request_queue_time_seconds_sum{model="default"}')
    )
    # One request waited for the other's 8 tokens at 20 ms each inside the engine.
    assert total > 0.1


async def test_engine_failure_is_a_server_error(make_client: MakeClient) -> None:
    client, _ = await make_client(engine_options={"fail_after": 2})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "engine_error"
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = _events(await stream.text())
    assert any(isinstance(e, dict) and "error" in e for e in events)
    assert events[-1] == "[DONE]"


async def test_chat_without_template_is_rejected(make_client: MakeClient) -> None:
    client, orch = await make_client()
    served = orch.get("default")
    object.__setattr__(served.model, "chat_template", None)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "model"


async def test_served_model_name(make_client: MakeClient) -> None:
    client, _ = await make_client(ServeConfig(warmup=False, served_model_name="smol"))
    body = await (await client.get("/v1/models")).json()
    assert body["data"][0]["id"] == "smol"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "smol"})
    assert resp.status == 200


async def test_the_end_of_turn_token_has_no_logprob_and_is_the_stop_reason(
    make_client: MakeClient,
) -> None:
    client, _orch = await make_client(engine_options={"end_token_id": 2})
    payload = {**CHAT, "logprobs": True, "top_logprobs": 1}
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 8  # one per piece of the script: the end token has none
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", 2)
    assert body["usage"]["completion_tokens"] == 9  # the end of turn was generated
    events = _events(
        await (await client.post("/v1/chat/completions", json={**payload, "stream": True})).text()
    )
    chunks = [c for c in events[:-1] if c["choices"]]
    streamed = [
        t
        for c in chunks
        if c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]
    assert chunks[-1]["choices"][0]["stop_reason"] == 2
    assert all(c["choices"][0]["stop_reason"] is None for c in chunks[:-1])
    legacy = {"model": "default", "prompt": "Hi", "max_tokens": 20, "logprobs": 1}
    text = await (await client.post("/v1/completions", json=legacy)).json()
    lp = text["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 8
    assert text["choices"][0]["stop_reason"] == 2


async def test_a_stop_string_is_the_stop_reason(client: TestClient[Any, Any]) -> None:
    body = await (await client.post("/v1/chat/completions", json={**CHAT, "stop": ["fake"]})).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Hello, I am a "
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "fake")
    payload = {**CHAT, "stop": ["fake"], "logprobs": True}
    scored = await (await client.post("/v1/chat/completions", json=payload)).json()
    # "Hello", ",", " I", " am", " a" and " fake", whose space is content, keep their entries.
    assert len(scored["choices"][0]["logprobs"]["content"]) == 6
    split = {**CHAT, "stop": ["m a f"], "logprobs": True}
    body = await (await client.post("/v1/chat/completions", json=split)).json()
    assert body["choices"][0]["message"]["content"] == "Hello, I a"
    # " am" starts the content's last word; " a" and " fake" are all stop string.
    assert len(body["choices"][0]["logprobs"]["content"]) == 4
    assert body["usage"]["completion_tokens"] == 6
    capped = await (
        await client.post(
            "/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 2}
        )
    ).json()
    assert (capped["choices"][0]["finish_reason"], capped["choices"][0]["stop_reason"]) == (
        "length",
        None,
    )


async def test_a_full_queue_refuses_with_503_and_retry_after(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, max_num_seqs=1, max_queued_requests=1)
    client, orch = await make_client(config, engine_options={"token_delay": 0.02})
    served = orch.get("default")
    held = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(2)]
    for _ in range(500):
        if served.generating == 2:
            break
        await asyncio.sleep(0.005)
    assert served.generating == 2
    status = (await (await client.get("/v1/status")).json())["models"]["default"]
    assert (status["admitted_requests"], status["admitted_limit"]) == (2, 2)
    refused = await client.post("/v1/completions", json={"model": "default", "prompt": "x"})
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    error = (await refused.json())["error"]
    assert error["code"] == "server_overloaded"
    assert "at most 2" in error["message"]
    # Tokenizing never waits for the engine, so a full queue does not refuse it.
    counted = await client.post("/tokenize", json={"model": "default", "prompt": "x"})
    assert counted.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:requests_rejected_total{model="default",reason="overloaded"} 1.0' in metrics
    assert all(r.status == 200 for r in await asyncio.gather(*held))
    assert served.generating == 0
    again = await client.post("/v1/chat/completions", json=CHAT)
    assert again.status == 200


async def test_continue_final_message_goes_on_with_the_assistant_text(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    started = [*CHAT["messages"], {"role": "assistant", "content": "The answer is"}]
    payload = {"model": "default", "messages": started, "continue_final_message": True}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.status == 200, await resp.text()
    tokenizer = orch.get("default").model.tokenizer
    prompt = orch.engines[0].requests[-1].prompt_token_ids
    assert tokenizer.decode(prompt) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is"
    )
    counted = await client.post(
        "/tokenize", json={"model": "default", "messages": started, "continue_final_message": True}
    )
    assert (await counted.json())["count"] == len(prompt)
    # Without the flag the assistant message is a finished turn and a new one starts.
    await client.post("/v1/chat/completions", json={**payload, "continue_final_message": False})
    fresh = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    assert fresh.endswith("The answer is<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
    ],
)
async def test_continue_final_message_needs_assistant_text(
    client: TestClient[Any, Any], messages: list[dict[str, str]]
) -> None:
    payload = {"model": "default", "messages": messages, "continue_final_message": True}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "continue_final_message" in error["message"]


async def test_guided_choice_reaches_the_engine(make_client: MakeClient) -> None:
    client, orch = await make_client()
    payload = {**CHAT, "guided_choice": ["yes", "no"]}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.status == 200, await resp.text()
    assert orch.engines[0].requests[-1].sampling.choices == ("yes", "no")
    legacy = {"model": "default", "prompt": "x", "guided_choice": ["a"]}
    assert (await client.post("/v1/completions", json=legacy)).status == 200
    assert orch.engines[0].requests[-1].sampling.choices == ("a",)
    metrics = await (await client.get("/metrics")).text()
    assert 'inferno:structured_requests_total{kind="choice",model="default"} 2.0' in metrics


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_choice": ["a", ""]}, "must not be empty"),
        ({"guided_choice": ["a"], "response_format": {"type": "json_object"}}, "JSON output"),
        ({"guided_choice": ["a"], "ignore_eos": True}, "ignore_eos"),
        (
            {"guided_choice": ["a"], "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tool calls",
        ),
    ],
)
async def test_guided_choice_is_validated(
    client: TestClient[Any, Any], extra: dict[str, Any], problem: str
) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert resp.status == 400
    assert problem in (await resp.json())["error"]["message"]


async def test_echo_with_logprobs_scores_the_prompt(make_client: MakeClient) -> None:
    client, orch = await make_client()
    payload = {"model": "default", "prompt": "ab", "max_tokens": 2, "echo": True, "logprobs": 1}
    body = await (await client.post("/v1/completions", json=payload)).json()
    choice = body["choices"][0]
    assert choice["text"] == "abHello,"
    lp = choice["logprobs"]
    # BOS, "a", "b" from the prompt, then the two generated tokens.
    assert len(lp["tokens"]) == 5
    assert lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:3] == [0.0, 0.0]
    assert lp["tokens"][1:3] == ["a", "b"]
    assert lp["text_offset"][:3] == [0, 0, 1]
    assert lp["text_offset"][3] == len("ab")  # the answer follows the echoed prompt
    assert orch.engines[0].requests[-1].sampling.prompt_logprobs == 1
    streamed = await client.post("/v1/completions", json={**payload, "stream": True})
    events = [e for e in _events(await streamed.text()) if e != "[DONE]"]
    first = events[0]["choices"][0]["logprobs"]
    assert first["tokens"][:3] == lp["tokens"][:3]
    assert first["token_logprobs"][0] is None
    plain = {**payload, "echo": False}
    await client.post("/v1/completions", json=plain)
    assert orch.engines[0].requests[-1].sampling.prompt_logprobs is None
    refused = await client.post("/v1/completions", json={**payload, "stream": True, "n": 2})
    assert refused.status == 400


async def test_priority_reaches_the_engine(make_client: MakeClient) -> None:
    client, orch = await make_client()
    await client.post("/v1/chat/completions", json={**CHAT, "priority": -5})
    assert orch.engines[0].requests[-1].priority == -5
    await client.post("/v1/completions", json={"model": "default", "prompt": "x", "priority": 3})
    assert orch.engines[0].requests[-1].priority == 3
    await client.post("/v1/responses", json={"model": "default", "input": "x", "priority": 2})
    assert orch.engines[0].requests[-1].priority == 2
    await client.post("/v1/chat/completions", json=CHAT)
    assert orch.engines[0].requests[-1].priority == 0
    bad = await client.post("/v1/chat/completions", json={**CHAT, "priority": 2**31})
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "priority"


async def test_echo_logprobs_of_a_batch_of_token_id_prompts(client: TestClient[Any, Any]) -> None:
    # As lm-evaluation-harness asks: token ids, a batch, max_tokens 1, echo, logprobs 1.
    prompts = [[5, 6, 7], [8, 9]]
    payload = {"model": "default", "prompt": prompts, "max_tokens": 1, "echo": True}
    body = await (await client.post("/v1/completions", json={**payload, "logprobs": 1})).json()
    for choice, ids in zip(body["choices"], prompts, strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1  # the prompt, then one answer token
        assert lp["token_logprobs"][0] is None
        assert all(v == 0.0 for v in lp["token_logprobs"][1 : len(ids)])


async def test_structured_outputs_is_vllms_spelling_of_the_constraints(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for spec, expected in (
        ({"choice": ["yes", "no"]}, ("text", None, ("yes", "no"), None)),
        ({"regex": "[a-z]+"}, ("text", None, (), "[a-z]+")),
        ({"grammar": 'root ::= "a"'}, ("text", None, (), 'root ::= "a"')),
        ({"json_object": True}, ("json_object", None, (), None)),
        ({"json": schema}, ("json_schema", schema, (), None)),
        ({"json": json.dumps(schema)}, ("json_schema", schema, (), None)),
    ):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "structured_outputs": spec})
        assert resp.status == 200, await resp.text()
        sp = orch.engines[0].requests[-1].sampling
        got_schema = json.loads(sp.json_schema) if sp.json_schema else None
        assert (sp.response_format, got_schema, sp.choices, sp.regex or sp.grammar) == expected
    for spec, problem in (
        ({"lark": "start: x"}, "lark not supported"),
        ({}, "give one of"),
        ({"choice": ["a"], "json_object": True}, "give one of"),
        ({"json": "{"}, "not valid JSON"),
        ("yes", "must be an object"),
    ):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "structured_outputs": spec})
        assert resp.status == 400
        assert problem in (await resp.json())["error"]["message"]
    both = {**CHAT, "structured_outputs": {"choice": ["a"]}, "guided_choice": ["b"]}
    assert (await client.post("/v1/chat/completions", json=both)).status == 400
    both = {**CHAT, "structured_outputs": {"regex": "a"}, "guided_regex": "b"}
    assert (await client.post("/v1/chat/completions", json=both)).status == 400


async def test_a_gbnf_grammar_reaches_the_engine_and_bad_grammars_are_400(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    grammar = 'root ::= answer "."\nanswer ::= "yes" | "no"'
    resp = await client.post("/v1/chat/completions", json={**CHAT, "grammar": grammar})
    assert resp.status == 200, await resp.text()
    assert orch.engines[0].requests[-1].sampling.grammar == grammar
    completion = {"model": "default", "prompt": "x", "grammar": grammar}
    assert (await client.post("/v1/completions", json=completion)).status == 200
    assert orch.engines[0].requests[-1].sampling.grammar == grammar
    for extra, param, problem in (
        ({"grammar": 'root ::= root "a" | "b"'}, "grammar", "left recursion"),
        ({"grammar": "root ::= missing"}, "grammar", "never defined"),
        ({"grammar": 'root ::= "a', "stream": True}, "grammar", "unterminated string"),
        ({"grammar": grammar, "guided_regex": "a"}, None, "cannot be combined"),
        ({"grammar": grammar, "ignore_eos": True}, None, "ignore_eos"),
    ):
        resp = await client.post("/v1/chat/completions", json={**CHAT, **extra})
        assert resp.status == 400, extra
        error = (await resp.json())["error"]
        assert problem in error["message"], error
        if param is not None:
            assert error["param"] == param, error


async def test_guided_regex_reaches_the_engine_and_bad_patterns_are_400(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    pattern = r"\(\d{3}\) \d{3}-\d{4}"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "guided_regex": pattern})
    assert resp.status == 200, await resp.text()
    assert orch.engines[0].requests[-1].sampling.regex == pattern
    completion = {"model": "default", "prompt": "x", "guided_regex": "[0-9]+"}
    assert (await client.post("/v1/completions", json=completion)).status == 200
    assert orch.engines[0].requests[-1].sampling.regex == "[0-9]+"
    for extra, param, problem in (
        ({"guided_regex": "(?=a)b"}, "regex", "look-around"),
        ({"guided_regex": "(a"}, "regex", "unexpected end"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, None, "cannot be combined"),
        ({"guided_regex": "a", "response_format": {"type": "json_object"}}, None, "combined"),
        ({"guided_regex": "a", "ignore_eos": True}, None, "ignore_eos"),
        ({"guided_regex": ""}, "guided_regex", "at least 1"),
    ):
        resp = await client.post("/v1/chat/completions", json={**CHAT, **extra})
        assert resp.status == 400, extra
        error = (await resp.json())["error"]
        assert problem in error["message"], error
        if param is not None:
            assert error["param"] == param, error
