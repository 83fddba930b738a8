"""The Ollama-compatible routes against FakeEngine, driven by Ollama's own Python client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import ollama
import pytest
from aiohttp.test_utils import TestClient
from inferno_backend.config import ServeConfig

from .conftest import MakeClient, scripted
from .test_tools import WEATHER

ANSWER = "Hello, I am a fake engine."
USER = [{"role": "user", "content": "Hi"}]
Connect = Callable[..., ollama.AsyncClient]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``connect(client, **kw)``: an Ollama client of the test server, closed afterwards."""
    made: list[ollama.AsyncClient] = []

    def make(client: TestClient[Any, Any], **kw: Any) -> ollama.AsyncClient:
        api = ollama.AsyncClient(host=str(client.make_url("")).rstrip("/"), **kw)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


async def test_chat_answers_with_counts_and_durations(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client()
    resp = await connect(client).chat(model="default", messages=USER, stream=False)
    assert resp.message.role == "assistant"
    assert resp.message.content == ANSWER
    assert resp.done is True
    assert resp.done_reason == "stop"
    assert resp.eval_count == 8
    request = orch.engines[0].requests[-1]
    assert resp.prompt_eval_count == len(request.prompt_token_ids)
    assert (resp.total_duration or 0) > 0
    assert resp.load_duration == 0
    assert (resp.created_at or "").endswith("Z")
    prompt = orch.get("default").model.tokenizer.decode(request.prompt_token_ids)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


async def test_chat_streams_json_lines_ending_with_done(
    connect: Connect, make_client: MakeClient
) -> None:
    client, _orch = await make_client()
    parts = [
        p async for p in await connect(client).chat(model="default", messages=USER, stream=True)
    ]
    assert "".join(p.message.content or "" for p in parts) == ANSWER
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 8
    raw = await client.post("/api/chat", json={"model": "default", "messages": USER})
    assert raw.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in (await raw.text()).splitlines()]
    assert lines[-1]["done"] is True
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}


async def test_options_map_to_sampling_under_their_names(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client()
    options = {
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 7,
        "min_p": 0.05,
        "repeat_penalty": 1.2,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.4,
        "seed": 11,
        "num_predict": 3,
        "stop": ["zz"],
        "num_ctx": 4096,  # accepted and ignored: the daemon sets the context
        "num_thread": 2,
    }
    resp = await connect(client).chat(model="default", messages=USER, options=options, stream=False)
    assert resp.done_reason == "length"
    assert resp.message.content == "Hello, I"
    sp = orch.engines[0].requests[-1].sampling
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p) == (0.5, 0.8, 7, 0.05)
    assert (sp.repetition_penalty, sp.presence_penalty, sp.frequency_penalty) == (1.2, 0.3, 0.4)
    assert (sp.seed, sp.max_tokens, sp.stop) == (11, 3, ("zz",))
    unlimited = {"num_predict": -1}
    await connect(client).chat(model="default", messages=USER, options=unlimited, stream=False)
    assert orch.engines[0].requests[-1].sampling.max_tokens > 1000  # the rest of the context


async def test_format_json_and_schema_constrain_the_output(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client(**scripted('{"city": "Rome"}'))
    resp = await connect(client).chat(model="default", messages=USER, format="json", stream=False)
    assert json.loads(resp.message.content or "") == {"city": "Rome"}
    assert orch.engines[0].requests[-1].sampling.response_format == "json_object"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    await connect(client).chat(model="default", messages=USER, format=schema, stream=False)
    sp = orch.engines[0].requests[-1].sampling
    assert sp.response_format == "json_schema"
    assert json.loads(sp.json_schema or "") == schema


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_come_back_with_object_arguments(
    connect: Connect, make_client: MakeClient, stream: bool
) -> None:
    client, orch = await make_client(
        **scripted('[{"name": "get_weather", "arguments": {"city": "Paris"}}]')
    )
    api = connect(client)
    if stream:
        parts = [
            p
            async for p in await api.chat(
                model="default", messages=USER, tools=[WEATHER], stream=True
            )
        ]
        message = next(p.message for p in parts if p.message.tool_calls)
    else:
        message = (await api.chat(model="default", messages=USER, tools=[WEATHER])).message
    assert message.tool_calls is not None
    (call,) = message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}
    # The call and its result go back as the conversation continues.
    follow = [
        *USER,
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    await api.chat(model="default", messages=follow, tools=[WEATHER], stream=False)
    prompt = orch.get("default").model.tokenizer.decode(
        orch.engines[0].requests[-1].prompt_token_ids
    )
    assert '[{"name": "get_weather", "arguments": {"city": "Paris"}}]' in prompt
    assert "<|im_start|>tool\nsunny<|im_end|>" in prompt


async def test_generate_renders_the_template_unless_raw_and_returns_context(
    connect: Connect,
    make_client: MakeClient,
) -> None:
    client, orch = await make_client()
    api = connect(client)
    tokenizer = orch.get("default").model.tokenizer
    resp = await api.generate(model="default", prompt="Hi", system="Be brief.", stream=False)
    assert resp.response == ANSWER
    request = orch.engines[0].requests[-1]
    assert tokenizer.decode(request.prompt_token_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert resp.context is not None
    assert list(resp.context[: len(request.prompt_token_ids)]) == list(request.prompt_token_ids)
    assert len(resp.context) == len(request.prompt_token_ids) + 8
    raw = await api.generate(model="default", prompt="abc", raw=True, stream=False)
    assert orch.engines[0].requests[-1].prompt_token_ids == tuple(tokenizer.encode("abc"))
    # A later request continues from the returned context; its own text gets no BOS.
    assert raw.context is not None
    await api.generate(model="default", prompt="d", raw=True, context=raw.context, stream=False)
    assert orch.engines[0].requests[-1].prompt_token_ids == (
        *raw.context,
        *tokenizer.encode("d", add_special_tokens=False),
    )
    parts = [p async for p in await api.generate(model="default", prompt="Hi", stream=True)]
    assert "".join(p.response or "" for p in parts) == ANSWER
    assert parts[-1].done is True
    assert parts[-1].context is not None


async def test_a_final_assistant_message_is_continued(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client()
    tokenizer = orch.get("default").model.tokenizer
    api = connect(client)
    prefix = [*USER, {"role": "assistant", "content": "Well,"}]
    await api.chat(model="default", messages=prefix, stream=False)
    prompt = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    assert prompt.endswith("<|im_start|>assistant\nWell,")
    empty = [*USER, {"role": "assistant", "content": ""}]
    await api.chat(model="default", messages=empty, stream=False)
    prompt = tokenizer.decode(orch.engines[0].requests[-1].prompt_token_ids)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


async def test_an_empty_request_only_loads_the_model(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client()
    api = connect(client)
    loaded = await api.generate(model="default", prompt="", stream=False)
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    chat = await api.chat(model="default", messages=[], stream=False)
    assert (chat.done, chat.done_reason) == (True, "load")
    assert orch.engines[0].requests == []


async def test_logprobs_are_returned_when_asked(connect: Connect, make_client: MakeClient) -> None:
    client, _orch = await make_client(engine_options={"end_token_id": 2})
    api = connect(client)
    resp = await api.chat(
        model="default", messages=USER, logprobs=True, top_logprobs=2, stream=False
    )
    assert resp.logprobs is not None
    assert len(resp.logprobs) == 8  # the end of turn has none
    assert all(len(lp.top_logprobs or ()) == 2 for lp in resp.logprobs)
    parts = [
        p async for p in await api.chat(model="default", messages=USER, logprobs=True, stream=True)
    ]
    assert sum(len(p.logprobs or ()) for p in parts) == 8


async def test_embed_gives_unit_vectors(connect: Connect, make_client: MakeClient) -> None:
    client, _orch = await make_client()
    api = connect(client)
    resp = await api.embed(model="default", input=["one", "two words"])
    assert len(resp.embeddings) == 2
    assert resp.embeddings[0] != resp.embeddings[1]
    for vec in resp.embeddings:
        assert abs(sum(v * v for v in vec) - 1) < 1e-6
    short = await api.embed(model="default", input="one", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert resp.prompt_eval_count == len("one") + len("two words") + 2  # bytes, a BOS each


async def test_the_older_embeddings_route_embeds_one_prompt(
    connect: Connect, make_client: MakeClient
) -> None:
    client, _orch = await make_client()
    api = connect(client)
    old = await api.embeddings(model="default", prompt="one")
    new = await api.embed(model="default", input="one")
    assert list(old.embedding) == list(new.embeddings[0])
    bad = await client.post("/api/embeddings", json={"model": "default", "prompt": ""})
    assert bad.status == 400


async def test_embed_truncates_a_long_input_unless_told_not_to(make_client: MakeClient) -> None:
    client, _orch = await make_client(engine_options={"max_model_len": 32})
    long = "x" * 100
    resp = await client.post("/api/embed", json={"model": "default", "input": long})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["prompt_eval_count"] == 32
    refused = await client.post(
        "/api/embed", json={"model": "default", "input": long, "truncate": False}
    )
    assert refused.status == 400
    assert (await refused.json())["error"]["param"] == "input"


async def test_tags_show_ps_and_version_describe_the_served_model(
    connect: Connect, make_client: MakeClient
) -> None:
    client, orch = await make_client()
    api = connect(client)
    (entry,) = (await api.list()).models
    assert entry.model == "default"
    assert entry.details is not None
    assert entry.details.family == "llama"
    assert entry.details.quantization_level == "F32"
    shown = await api.show("default")
    served = orch.get("default")
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == served.max_model_len
    assert shown.modelinfo["llama.embedding_length"] == served.model.config.hidden_size
    assert "tools" in (shown.capabilities or ())
    assert "<|im_start|>" in (shown.template or "")
    (loaded,) = (await api.ps()).models
    assert loaded.context_length == served.max_model_len
    version = await (await client.get("/api/version")).json()
    assert version["version"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/api/chat", {"model": "nope", "messages": USER}, 404, "model"),
        ("/api/chat", {"model": "default", "messages": USER, "options": {"top_p": 3}}, 400,
         "options.top_p"),
        ("/api/chat", {"model": "default", "messages": USER, "options": {"num_predict": 0}}, 400,
         "options.num_predict"),
        ("/api/chat", {"model": "default", "messages": USER, "think": True}, 400, "think"),
        ("/api/chat", {"model": "default", "messages": [{"role": "user", "content": "x",
         "images": ["aGk="]}]}, 400, "messages.0"),
        ("/api/chat", {"model": "default", "messages": [{"role": "robot"}]}, 400,
         "messages.0.role"),
        ("/api/chat", {"model": "default", "messages": USER, "tools": [WEATHER],
         "format": "json"}, 400, "response_format"),
        ("/api/generate", {"model": "default", "prompt": "x", "suffix": "y"}, 400, None),
        ("/api/generate", {"model": "default", "prompt": "x", "context": [99999]}, 400,
         "prompt"),
        ("/api/generate", {"model": "default", "prompt": "x", "context": [-1]}, 400,
         "context"),
        ("/api/generate", {"model": "default", "prompt": "x", "raw": True, "system": "s"}, 400,
         None),
        ("/api/embed", {"model": "default", "input": []}, 400, "input"),
        ("/api/show", {}, 400, None),
        ("/api/show", {"model": "nope"}, 404, "model"),
    ],
)  # fmt: skip
async def test_bad_requests_get_an_error_naming_the_field(
    client: TestClient[Any, Any], path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    resp = await client.post(path, json=body)
    error = (await resp.json())["error"]
    assert resp.status == status, error
    assert error["message"]
    if param is not None:
        assert error["param"] == param


async def test_the_client_reports_the_error_message(
    connect: Connect, client: TestClient[Any, Any]
) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await connect(client).chat(model="nope", messages=USER)
    assert info.value.status_code == 404
    assert "nope" in str(info.value)


async def test_api_keys_guard_the_ollama_and_tokenizer_routes(
    connect: Connect, make_client: MakeClient
) -> None:
    client, _orch = await make_client(ServeConfig(warmup=False, api_keys=("k1",)))
    for path, body in (
        ("/api/chat", {"model": "default", "messages": USER}),
        ("/tokenize", {"model": "default", "prompt": "x"}),
        ("/detokenize", {"model": "default", "tokens": [5]}),
    ):
        assert (await client.post(path, json=body)).status == 401
    assert (await client.get("/api/tags")).status == 401
    api = connect(client, headers={"Authorization": "Bearer k1"})
    assert (await api.chat(model="default", messages=USER, stream=False)).message.content == ANSWER


async def test_a_failed_generation_ends_the_stream_with_an_error_line(
    make_client: MakeClient,
) -> None:
    client, _orch = await make_client(engine_options={"fail_after": 2})
    resp = await client.post("/api/chat", json={"model": "default", "messages": USER})
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "error" in lines[-1]
    assert "scripted failure" in lines[-1]["error"]
    whole = await client.post(
        "/api/chat", json={"model": "default", "messages": USER, "stream": False}
    )
    assert whole.status == 500
    assert (await whole.json())["error"]["code"] == "engine_error"
