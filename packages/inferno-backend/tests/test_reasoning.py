"""Reasoning models: ``<think>`` split from the answer (chat, Responses, Ollama), the
``reasoning_parser`` setting, and ``chat_template_kwargs``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import ollama
import openai
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_backend.api.reasoning import (
    ReasoningStream,
    count_reasoning_tokens,
    parser_on,
    split_reasoning,
    think_start,
)
from inferno_backend.config import ServeConfig, load_config
from inferno_backend.testing import CHAT_TEMPLATE, FakeModelSource
from inferno_inference import GenerationRequest
from inferno_models import ChatTemplate

from .conftest import MakeClient
from .test_openai_routes import _events
from .test_tools import WEATHER

#: A ChatML template that thinks as Qwen3's does: an assistant turn's reasoning_content is
#: written in a think block, enable_thinking=false closes an empty block in the prompt, and
#: reasoning_effort (when given) is written into the system turn.
THINKING_TEMPLATE = (
    "{% if reasoning_effort is defined %}<|im_start|>system\neffort={{ reasoning_effort }}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.get('reasoning_content') %}<think>\n{{ m['reasoning_content'] }}\n</think>\n\n"
    "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
#: DeepSeek-R1's way: earlier answers lose their reasoning, and the generation prompt opens
#: the think block for the model.
OPENED_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'].split('</think>')[-1] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
THOUGHT = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello there!"
REASONING = "The user greets me.\nI greet back."
#: The pieces of 7 characters up to the one that ends "</think>".
REASONING_TOKENS = -(-(THOUGHT.index("</think>") + len("</think>")) // 7)
CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def _options(
    answer: str | Sequence[str] = THOUGHT, template: str | None = THINKING_TEMPLATE, **kw: Any
) -> dict[str, Any]:
    """`make_client` options: a model with ``template`` whose every choice streams ``answer``
    (in pieces of 7 characters, which cut the tags, or in the pieces given)."""

    def script(request: GenerationRequest, index: int) -> Sequence[str]:
        if not isinstance(answer, str):
            return answer
        return [answer[i : i + 7] for i in range(0, len(answer), 7)]

    return {
        "engine_options": {"script": script, **kw},
        "source": FakeModelSource(chat_template=template),
    }


def _prompt(orch: Any) -> str:
    request = orch.engines[0].requests[-1]
    return str(orch.get("default").model.tokenizer.decode(request.prompt_token_ids))


# -- the splitter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "reasoning", "content"),
    [
        (THOUGHT, "none", REASONING, "Hello there!"),
        ("  <think>x</think>y", "none", "x", "y"),
        ("<think>\nstill thinking", "none", "still thinking", ""),  # cut before the tag
        ("<think></think>\n\nHi", "none", None, "Hi"),
        ("Hi, no block </think> here", "none", None, "Hi, no block </think> here"),
        ("  Hi", "none", None, "  Hi"),
        ("<thi", "none", None, "<thi"),
        ("I think.\n</think>\n\nHi", "open", "I think.", "Hi"),
        ("I think and am cut", "open", "I think and am cut", ""),
        ("<think>x</think>Hi", "closed", None, "<think>x</think>Hi"),
    ],
)  # fmt: skip
def test_split_reasoning(text: str, start: Any, reasoning: str | None, content: str) -> None:
    split = split_reasoning(text, start)
    assert (split.reasoning, split.content) == (reasoning, content)


_ALPHABET = ["<think>", "</think>", "<", "/", "think", ">", "<th", "</th", " ", "\n", "a", "b."]


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_ALPHABET), max_size=16).map("".join),
    cuts=st.lists(st.integers(0, 60), max_size=12),
    start=st.sampled_from(["none", "open", "closed"]),
)
def test_streamed_split_equals_the_whole_split(pieces: str, cuts: list[int], start: Any) -> None:
    text = pieces
    at = sorted({c for c in cuts if c <= len(text)})
    chunks = [text[a:b] for a, b in zip([0, *at], [*at, len(text)], strict=True)]
    stream = ReasoningStream(start)
    deltas = [stream.push(chunk, 1) for chunk in chunks]
    deltas.append(stream.finish())
    whole = split_reasoning(text, start)
    assert ("".join(d.reasoning for d in deltas) or None) == whole.reasoning
    assert "".join(d.content for d in deltas) == whole.content
    # Tokens counted as reasoning: every piece up to the one that closed the block.
    assert 0 <= stream.reasoning_tokens <= len(chunks)
    if whole.reasoning is None and start != "open" and not text.lstrip().startswith("<think>"):
        assert stream.reasoning_tokens == 0
    assert count_reasoning_tokens(chunks, [1] * len(chunks), start) == stream.reasoning_tokens


def test_a_stream_holds_back_only_what_may_become_a_tag() -> None:
    stream = ReasoningStream()
    assert stream.push("<thi").reasoning == ""  # may still open a block
    assert stream.push("nk>\nI reason").reasoning == "I reason"
    assert stream.push(" more\n</th").reasoning == " more"  # the blank and the tag's start wait
    delta = stream.push("ink>\n\nAnswer", 1)
    assert (delta.reasoning, delta.content) == ("", "Answer")
    assert not stream.in_reasoning


def test_parser_setting_and_where_the_output_starts() -> None:
    thinking, plain = ChatTemplate(THINKING_TEMPLATE), ChatTemplate(CHAT_TEMPLATE)
    assert parser_on("auto", thinking)
    assert not parser_on("auto", plain)
    assert not parser_on("auto", None)
    assert parser_on("think", plain)
    assert not parser_on("none", thinking)
    assert think_start("<|im_start|>assistant\n<think>\n") == "open"
    assert think_start("<|im_start|>assistant\n<think>\n\n</think>\n\n") == "closed"
    assert think_start("<|im_start|>assistant\n") == "none"
    assert think_start("...", continued="<think>\nLet me") == "open"
    assert think_start("...", continued="<think>x</think>The answer") == "closed"


def test_the_flag_and_the_config_field() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS

    args = build_parser().parse_args(["serve", "--reasoning-parser", "none"])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    assert load_config(env={}, overrides=overrides).reasoning_parser == "none"
    assert load_config(env={}).reasoning_parser == "auto"
    assert load_config(env={"INFERNO_REASONING_PARSER": "think"}).reasoning_parser == "think"
    with pytest.raises(ValueError, match="reasoning_parser"):
        load_config(env={"INFERNO_REASONING_PARSER": "deepseek"})


def test_default_template_variables_come_from_flags_env_and_files() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS

    flag = '{"enable_thinking": false}'
    args = build_parser().parse_args(["serve", "--default-chat-template-kwargs", flag])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    config = load_config(env={}, overrides=overrides)
    assert config.default_chat_template_kwargs == {"enable_thinking": False}
    env = {"INFERNO_DEFAULT_CHAT_TEMPLATE_KWARGS": '{"reasoning_effort": "low"}'}
    assert load_config(env=env).default_chat_template_kwargs == {"reasoning_effort": "low"}
    with pytest.raises(ValueError, match="not a JSON object"):
        load_config(env={"INFERNO_DEFAULT_CHAT_TEMPLATE_KWARGS": "{enable_thinking"})
    with pytest.raises(ValueError, match="messages: set by the daemon"):
        load_config(env={"INFERNO_DEFAULT_CHAT_TEMPLATE_KWARGS": '{"messages": []}'})


async def test_default_template_variables_yield_to_the_requests(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, default_chat_template_kwargs={"enable_thinking": False})
    client, orch = await make_client(config, **_options("Hello!"))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert _prompt(orch).endswith(closed)
    counted = await (await client.post("/tokenize", json=CHAT)).json()
    assert counted["count"] == len(orch.engines[0].requests[-1].prompt_token_ids)
    payload = {**CHAT, "chat_template_kwargs": {"enable_thinking": True}}
    assert (await client.post("/v1/chat/completions", json=payload)).status == 200
    assert _prompt(orch).endswith("<|im_start|>assistant\n")
    api = _ollama(client)
    try:
        await api.chat(model="default", messages=CHAT["messages"], think=True)
        assert _prompt(orch).endswith("<|im_start|>assistant\n")  # think: true asks for it
    finally:
        await api.close()


async def test_a_thinking_budget_reaches_the_engine(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options())
    payload = {**CHAT, "thinking_token_budget": 64}
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    assert body["choices"][0]["message"]["reasoning_content"] == REASONING
    sampling = orch.engines[0].requests[-1].sampling
    assert (sampling.reasoning_end, sampling.reasoning_start) == ("</think>", "<think>")
    assert sampling.reasoning_budget == 64
    # Without thinking (the prompt closed the block) there is nothing to cut.
    closed = {**payload, "chat_template_kwargs": {"enable_thinking": False}}
    assert (await client.post("/v1/chat/completions", json=closed)).status == 200
    assert orch.engines[0].requests[-1].sampling.reasoning_budget is None
    responses = {"model": "default", "input": "Hi", "thinking_token_budget": 8}
    assert (await client.post("/v1/responses", json=responses)).status == 200
    assert orch.engines[0].requests[-1].sampling.reasoning_budget == 8
    bad = await client.post("/v1/chat/completions", json={**CHAT, "thinking_token_budget": -1})
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "thinking_token_budget"


# -- chat completions -----------------------------------------------------------------------------


async def test_chat_splits_reasoning_from_content(make_client: MakeClient) -> None:
    client, _ = await make_client(**_options())
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    message = body["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Hello there!",
        "reasoning": REASONING,  # vLLM's newer name, beside the one most clients read
        "reasoning_content": REASONING,
    }
    usage = body["usage"]
    assert usage["completion_tokens"] == -(-len(THOUGHT) // 7)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}


@pytest.mark.parametrize("n", [1, 2])
async def test_chat_streams_reasoning_then_content(make_client: MakeClient, n: int) -> None:
    client, _ = await make_client(**_options())
    payload = {**CHAT, "stream": True, "n": n, "stream_options": {"include_usage": True}}
    events = _events(await (await client.post("/v1/chat/completions", json=payload)).text())
    assert events[-1] == "[DONE]"
    for index in range(n):
        deltas = [c["delta"] for e in events[:-1] for c in e["choices"] if c["index"] == index]
        reasoning = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
        assert reasoning == [d["reasoning"] for d in deltas if "reasoning" in d]
        content = [d["content"] for d in deltas if d.get("content")]
        assert "".join(reasoning) == REASONING
        assert "".join(content) == "Hello there!"
        kinds = [("reasoning_content" in d, bool(d.get("content"))) for d in deltas]
        last_reasoning = max(i for i, (r, _) in enumerate(kinds) if r)
        first_content = min(i for i, (_, c) in enumerate(kinds) if c)
        assert last_reasoning <= first_content
    usage = events[-2]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == n * REASONING_TOKENS


async def test_a_tag_cut_in_every_place_streams_the_same(make_client: MakeClient) -> None:
    for size in range(1, 10):
        pieces = [THOUGHT[i : i + size] for i in range(0, len(THOUGHT), size)]
        client, _ = await make_client(**_options(pieces))
        payload = {**CHAT, "stream": True}
        events = _events(await (await client.post("/v1/chat/completions", json=payload)).text())
        deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == REASONING
        assert "".join(d.get("content") or "" for d in deltas) == "Hello there!"


async def test_reasoning_without_its_closing_tag_is_all_reasoning(make_client: MakeClient) -> None:
    client, _ = await make_client(**_options())
    body = await (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == ""
    assert choice["message"]["reasoning_content"] == "The user gree"
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


async def test_an_opened_block_in_the_prompt_starts_the_output_in_reasoning(
    make_client: MakeClient,
) -> None:
    answer = "Hmm, a greeting.\n</think>\n\nHi!"
    client, orch = await make_client(**_options(answer, OPENED_TEMPLATE))
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert _prompt(orch).endswith("<|im_start|>assistant\n<think>\n")
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("Hmm, a greeting.", "Hi!")


async def test_a_model_that_does_not_think_is_not_split(make_client: MakeClient) -> None:
    # The default template writes no </think>: auto leaves the output (tags too) alone.
    client, _ = await make_client(**_options(template=CHAT_TEMPLATE))
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": THOUGHT}
    assert "completion_tokens_details" not in body["usage"]
    # ... unless the parser is on for every model.
    config = ServeConfig(warmup=False, reasoning_parser="think")
    client, _ = await make_client(config, **_options(template=CHAT_TEMPLATE))
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["choices"][0]["message"]["reasoning_content"] == REASONING


async def test_the_parser_off_leaves_the_tags_in_the_content(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, reasoning_parser="none")
    client, _ = await make_client(config, **_options())
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": THOUGHT}
    payload = {**CHAT, "stream": True}
    events = _events(await (await client.post("/v1/chat/completions", json=payload)).text())
    deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
    assert not any("reasoning_content" in d for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == THOUGHT


async def test_chat_template_kwargs_reach_the_template(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options("Hello!"))
    payload = {**CHAT, "chat_template_kwargs": {"enable_thinking": False}}
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    assert _prompt(orch).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # The template closed the block: what the model writes is the answer.
    assert body["choices"][0]["message"]["content"] == "Hello!"
    assert body["choices"][0]["message"]["reasoning_content"] is None
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "low"})
    assert _prompt(orch).startswith("<|im_start|>system\neffort=low<|im_end|>\n")
    # /tokenize renders them as chat does.
    tokens = await client.post("/tokenize", json=payload)
    count = (await tokens.json())["count"]
    assert count == len(orch.engines[0].requests[0].prompt_token_ids)


async def test_responses_take_chat_template_kwargs(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options("Hello!"))
    payload = {
        "model": "default",
        "input": "Hi",
        "chat_template_kwargs": {"enable_thinking": False},
    }
    body = await (await client.post("/v1/responses", json=payload)).json()
    assert _prompt(orch).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["output"][0]["content"][0]["text"] == "Hello!"
    efforts = {**payload, "reasoning": {"effort": "low"}}
    assert (await client.post("/v1/responses", json=efforts)).status == 200
    assert _prompt(orch).startswith("<|im_start|>system\neffort=low<|im_end|>\n")
    reserved = {**payload, "chat_template_kwargs": {"messages": []}}
    resp = await client.post("/v1/responses", json=reserved)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "chat_template_kwargs"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"messages": []}, "messages"),
        ({"bos_token": "<s>", "add_generation_prompt": False}, "add_generation_prompt, bos_token"),
        ({"tools": []}, "tools"),
        ({"raise_exception": 1}, "raise_exception"),
        ([1, 2], "an object"),
        ("enable_thinking=false", "an object"),
    ],
)
async def test_chat_template_kwargs_may_not_replace_the_servers_names(
    client: TestClient[Any, Any], kwargs: Any, problem: str
) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": kwargs})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "chat_template_kwargs"
    assert error["type"] == "invalid_request_error"
    assert problem in error["message"]


async def test_earlier_reasoning_reaches_the_template(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options())
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Be polite."},
        {"role": "user", "content": "Bye"},
    ]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert resp.status == 200
    assert "<|im_start|>assistant\n<think>\nBe polite.\n</think>\n\nHello!<|im_end|>" in _prompt(
        orch
    )
    bad = [{"role": "user", "content": "Hi", "reasoning_content": "no"}]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": bad})
    assert resp.status == 400
    # vLLM's newer name reaches the template the same way; two different texts are a 400.
    newer = [{**m, "reasoning": m.pop("reasoning_content")} if "reasoning_content" in m else m
             for m in (dict(m) for m in messages)]  # fmt: skip
    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": newer})
    assert resp.status == 200
    assert "<think>\nBe polite.\n</think>\n\nHello!" in _prompt(orch)
    both = [messages[0], {**messages[1], "reasoning": "Be rude."}, messages[2]]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": both})
    assert resp.status == 400
    assert "differs from reasoning_content" in (await resp.json())["error"]["message"]


async def test_json_output_follows_the_reasoning(make_client: MakeClient) -> None:
    answer = '<think>\nAn object, then.\n</think>\n\n{"a": 1}'
    client, orch = await make_client(**_options(answer))
    payload: dict[str, Any] = {**CHAT, "response_format": {"type": "json_object"}}
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": '{"a": 1}',
        "reasoning": "An object, then.",
        "reasoning_content": "An object, then.",
    }
    # The engine holds the output to JSON only once the model closes its think block (if it
    # opens one: the prompt leaves that to the model).
    sampling = orch.engines[0].requests[-1].sampling
    assert (sampling.reasoning_end, sampling.reasoning_start) == ("</think>", "<think>")
    # A prompt that closed an empty block asks for the answer alone: JSON from the start.
    payload["chat_template_kwargs"] = {"enable_thinking": False}
    await client.post("/v1/chat/completions", json=payload)
    assert _prompt(orch).endswith("<think>\n\n</think>\n\n")
    assert orch.engines[0].requests[-1].sampling.reasoning_end is None


async def test_choices_follow_a_block_the_template_opened(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options("Paris?\n</think>\n\nParis", OPENED_TEMPLATE))
    payload = {**CHAT, "guided_choice": ["Paris", "Rome"]}
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("Paris?", "Paris")
    sampling = orch.engines[0].requests[-1].sampling
    assert (sampling.reasoning_end, sampling.reasoning_start) == ("</think>", None)


async def test_without_the_parser_constraints_hold_from_the_first_token(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client(
        ServeConfig(warmup=False, reasoning_parser="none"), **_options('{"a": 1}')
    )
    payload = {**CHAT, "response_format": {"type": "json_object"}}
    assert (await client.post("/v1/chat/completions", json=payload)).status == 200
    assert orch.engines[0].requests[-1].sampling.reasoning_end is None


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_read_from_the_content_only(
    make_client: MakeClient, stream: bool
) -> None:
    call = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    answer = f"<think>\nThey want [the weather].\n</think>\n\n{call}"
    client, _ = await make_client(**_options(answer))
    payload = {**CHAT, "tools": [WEATHER], "stream": stream}
    resp = await client.post("/v1/chat/completions", json=payload)
    if not stream:
        choice = (await resp.json())["choices"][0]
        message = choice["message"]
        assert choice["finish_reason"] == "tool_calls"
        assert message["content"] is None
        assert message["reasoning_content"] == "They want [the weather]."
        calls = message["tool_calls"]
    else:
        events = _events(await resp.text())
        deltas = [c["delta"] for e in events[:-1] for c in e["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == (
            "They want [the weather]."
        )
        assert not any(d.get("content") for d in deltas)
        calls = [c for d in deltas for c in d.get("tool_calls", ())]
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]


async def test_the_openai_client_reads_reasoning_content(make_client: MakeClient) -> None:
    client, _ = await make_client(**_options())
    oai = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    try:
        done = await oai.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
        message = done.choices[0].message
        assert message.content == "Hello there!"
        assert (message.model_extra or {})["reasoning_content"] == REASONING
        details = done.usage.completion_tokens_details if done.usage else None
        assert details is not None
        assert details.reasoning_tokens == REASONING_TOKENS
        stream = await oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        reasoning, content = [], []
        async for chunk in stream:
            for choice in chunk.choices:
                reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
                content.append(choice.delta.content or "")
        assert ("".join(reasoning), "".join(content)) == (REASONING, "Hello there!")
    finally:
        await oai.close()


# -- Responses API --------------------------------------------------------------------------------


async def test_responses_put_a_reasoning_item_before_the_message(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options())
    payload = {"model": "default", "input": "Hi", "reasoning": {"effort": "high"}}
    body = await (await client.post("/v1/responses", json=payload)).json()
    assert _prompt(orch).startswith("<|im_start|>system\neffort=high<|im_end|>\n")
    thought, message = body["output"]
    assert thought["type"] == "reasoning"
    assert thought["id"].startswith("rs_")
    assert thought["summary"] == []
    assert thought["content"] == [{"type": "reasoning_text", "text": REASONING}]
    assert message["type"] == "message"
    assert message["content"][0]["text"] == "Hello there!"
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}

    # A continuation gives the reasoning back to the template.
    follow = {"model": "default", "input": "Bye", "previous_response_id": body["id"]}
    assert (await client.post("/v1/responses", json=follow)).status == 200
    assert f"<think>\n{REASONING}\n</think>\n\nHello there!<|im_end|>" in _prompt(orch)

    # So does a client that sends the output items back itself.
    echoed = {"model": "default", "input": [*body["output"], {"role": "user", "content": "Bye"}]}
    assert (await client.post("/v1/responses", json=echoed)).status == 200
    assert f"<think>\n{REASONING}\n</think>\n\nHello there!<|im_end|>" in _prompt(orch)


async def test_a_model_without_reasoning_has_no_reasoning_item(make_client: MakeClient) -> None:
    client, _ = await make_client()
    body = await (
        await client.post("/v1/responses", json={"model": "default", "input": "Hi"})
    ).json()
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def _sse(raw: str) -> list[dict[str, Any]]:
    out = []
    for block in raw.split("\n\n"):
        data = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append(json.loads(data[0]))
    return out


async def test_responses_stream_reasoning_events_first(make_client: MakeClient) -> None:
    client, _ = await make_client(**_options())
    payload = {"model": "default", "input": "Hi", "stream": True}
    events = _sse(await (await client.post("/v1/responses", json=payload)).text())
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[2]["item"]["type"] == "reasoning"
    deltas = [e for e in events if e["type"] == "response.reasoning_text.delta"]
    assert "".join(e["delta"] for e in deltas) == REASONING
    assert all(e["output_index"] == 0 for e in deltas)
    done = kinds.index("response.reasoning_text.done")
    message_added = [
        i for i, e in enumerate(events)
        if e["type"] == "response.output_item.added" and e["item"]["type"] == "message"
    ]  # fmt: skip
    assert message_added
    assert message_added[0] > done
    text = [e for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in text) == "Hello there!"
    assert all(e["output_index"] == 1 for e in text)
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}


async def test_the_openai_client_streams_a_response_with_reasoning(
    make_client: MakeClient,
) -> None:
    client, _ = await make_client(**_options())
    oai = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    try:
        async with oai.responses.stream(model="default", input="Hi") as stream:
            reasoning = [e.delta async for e in stream if e.type == "response.reasoning_text.delta"]
            final = await stream.get_final_response()
        assert "".join(reasoning) == REASONING
        assert final.output_text == "Hello there!"
        thought = final.output[0]
        assert thought.type == "reasoning"
        assert [c.text for c in thought.content or ()] == [REASONING]
        assert final.usage is not None
        assert final.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    finally:
        await oai.close()


# -- Ollama ---------------------------------------------------------------------------------------


def _ollama(client: TestClient[Any, Any]) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=str(client.make_url("")).rstrip("/"))


@pytest.mark.parametrize("think", [True, "high", None])
async def test_ollama_chat_returns_thinking_apart(make_client: MakeClient, think: Any) -> None:
    client, orch = await make_client(**_options())
    api = _ollama(client)
    try:
        messages = [{"role": "user", "content": "Hi"}]
        resp = await api.chat(model="default", messages=messages, think=think, stream=False)
        assert resp.message.thinking == REASONING
        assert resp.message.content == "Hello there!"
        stream = await api.chat(model="default", messages=messages, think=think, stream=True)
        parts = [p async for p in stream]
        assert "".join(p.message.thinking or "" for p in parts) == REASONING
        assert "".join(p.message.content or "" for p in parts) == "Hello there!"
        first_content = min(i for i, p in enumerate(parts) if p.message.content)
        assert all(not p.message.thinking for p in parts[first_content:])
        if think == "high":
            assert _prompt(orch).startswith("<|im_start|>system\neffort=high<|im_end|>\n")
        gen = await api.generate(model="default", prompt="Hi", think=think, stream=False)
        assert (gen.thinking, gen.response) == (REASONING, "Hello there!")
        streamed = await api.generate(model="default", prompt="Hi", think=think, stream=True)
        chunks = [c async for c in streamed]
        assert "".join(c.thinking or "" for c in chunks) == REASONING
        assert "".join(c.response for c in chunks) == "Hello there!"
    finally:
        await api.close()


async def test_ollama_format_applies_after_the_thinking(make_client: MakeClient) -> None:
    answer = '<think>\nJSON it is.\n</think>\n\n{"a": 1}'
    client, orch = await make_client(**_options(answer))
    api = _ollama(client)
    try:
        messages = [{"role": "user", "content": "Hi"}]
        resp = await api.chat(
            model="default", messages=messages, think=True, format="json", stream=False
        )
        assert (resp.message.thinking, resp.message.content) == ("JSON it is.", '{"a": 1}')
        sampling = orch.engines[0].requests[-1].sampling
        assert sampling.response_format == "json_object"
        assert sampling.reasoning_end == "</think>"
        await api.chat(model="default", messages=messages, think=False, format="json")
        assert orch.engines[0].requests[-1].sampling.reasoning_end is None
    finally:
        await api.close()


async def test_ollama_think_false_asks_the_template_and_splits_nothing(
    make_client: MakeClient,
) -> None:
    client, orch = await make_client(**_options("Hello!"))
    api = _ollama(client)
    try:
        messages = [{"role": "user", "content": "Hi"}]
        resp = await api.chat(model="default", messages=messages, think=False, stream=False)
        assert _prompt(orch).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert resp.message.content == "Hello!"
        assert resp.message.thinking is None
        raw = await client.post(
            "/api/generate",
            json={"model": "default", "prompt": "Hi", "think": False, "stream": False},
        )
        assert "thinking" not in await raw.json()
    finally:
        await api.close()


async def test_ollama_thinking_of_a_model_that_does_not_think_is_refused(
    make_client: MakeClient,
) -> None:
    client, _ = await make_client()
    for path, body in [
        ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/api/generate", {"prompt": "Hi"}),
    ]:
        resp = await client.post(path, json={"model": "default", "think": True, **body})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["message"] == "'default' does not support thinking"
        assert error["param"] == "think"
        # Left out or false, it is no problem.
        ok = await client.post(path, json={"model": "default", "think": False, **body})
        assert ok.status == 200
    bad = await client.post("/api/chat", json={"model": "default", "messages": [], "think": "max"})
    assert bad.status == 400


async def test_ollama_thinking_in_history_and_capabilities(make_client: MakeClient) -> None:
    client, orch = await make_client(**_options())
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "thinking": "Be polite."},
        {"role": "user", "content": "Bye"},
    ]
    resp = await client.post(
        "/api/chat", json={"model": "default", "messages": messages, "stream": False}
    )
    assert resp.status == 200
    assert "<think>\nBe polite.\n</think>\n\nHello!" in _prompt(orch)
    shown = await (await client.post("/api/show", json={"model": "default"})).json()
    assert "thinking" in shown["capabilities"]
    plain, _ = await make_client()
    shown = await (await plain.post("/api/show", json={"model": "default"})).json()
    assert "thinking" not in shown["capabilities"]
