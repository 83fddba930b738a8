"""A real ``inferno serve`` on the default model, driven by the official openai client."""

from __future__ import annotations

import datetime
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    daemon = ServeProcess("--max-num-seqs", "16").start()
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def client(server: ServeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["default"]
    assert client.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_greedy_answers(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_responses_api_answers_like_chat(client: openai.OpenAI) -> None:
    # The openai client's Responses API: the same greedy answer as the chat route, whole,
    # streamed as typed events, and through the client's own stream accumulator.
    chat = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=16, temperature=0
    )
    expected = chat.choices[0].message.content
    resp = client.responses.create(
        model="default",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
    )
    assert resp.output_text == expected
    assert "Paris" in resp.output_text
    assert resp.status in ("completed", "incomplete")
    assert resp.usage is not None
    assert resp.usage.output_tokens == chat.usage.completion_tokens  # type: ignore[union-attr]
    events = list(
        client.responses.create(
            model="default",
            input=[{"role": "user", "content": "What is the capital of France?"}],
            max_output_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    assert events[0].type == "response.created"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == expected
    assert events[-1].type in ("response.completed", "response.incomplete")
    with client.responses.stream(
        model="default",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == expected
    scored = client.responses.create(
        model="default",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    part = scored.output[0].content[0]  # type: ignore[union-attr]
    # The tokens spell the text; the end-of-turn token that ended it has no entry.
    spelled = "".join(t.token for t in part.logprobs)  # type: ignore[union-attr]
    assert spelled == scored.output_text
    assert all(len(t.top_logprobs) == 2 for t in part.logprobs)  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="default", input="x", previous_response_id="resp_1")
    assert "not found" in str(err.value)


def test_responses_continue_by_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default",
        input="My name is Ada. Say hello to me.",
        max_output_tokens=24,
        temperature=0,
    )
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model="default",
        input="What is my name? Answer with the name only.",
        previous_response_id=first.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The first turn (its question and answer) came along in front of the new input.
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_chat_logprobs_spell_the_answer_and_the_end_of_turn_is_the_stop_reason(
    server: ServeProcess, client: openai.OpenAI
) -> None:
    resp = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=64,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None
    tokens = choice.logprobs.content or []
    assert "".join(t.token for t in tokens) == choice.message.content
    # One more token was generated than has a logprob: the end of turn, named as stop_reason.
    assert resp.usage is not None
    assert resp.usage.completion_tokens == len(tokens) + 1
    end_of_turn = choice.model_extra["stop_reason"] if choice.model_extra else None
    assert isinstance(end_of_turn, int)
    detok = _post_json(server, "/detokenize", {"model": "default", "tokens": [end_of_turn]})
    assert detok["prompt"] == "<|im_end|>"


def test_continue_final_message_finishes_the_assistant_sentence(client: openai.OpenAI) -> None:
    started: list[ChatCompletionMessageParam] = [
        *MESSAGES,
        {"role": "assistant", "content": "The capital of France is"},
    ]
    resp = client.chat.completions.create(
        model="default",
        messages=started,
        max_tokens=8,
        temperature=0,
        extra_body={"continue_final_message": True},
    )
    rest = resp.choices[0].message.content or ""
    assert "Paris" in rest
    assert not rest.lstrip().startswith("The capital")  # it went on, it did not start over


def test_guided_choice_answers_with_one_of_the_choices(client: openai.OpenAI) -> None:
    options = ["Berlin", "Paris", "Madrid", "London"]
    resp = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        temperature=0,
        extra_body={"guided_choice": options},
    )
    assert resp.choices[0].message.content == "Paris"
    assert resp.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Is the sky green? Answer yes or no."}],
        temperature=1.0,
        n=4,
        seed=3,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert {c.message.content for c in sampled.choices} <= {"yes", "no"}


def test_guided_regex_answers_with_a_whole_match(client: openai.OpenAI) -> None:
    pattern = r"\(\d{3}\) \d{3}-\d{4}"
    sampled = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Give me a phone number."}],
        temperature=1.0,
        n=3,
        seed=5,
        max_tokens=24,
        extra_body={"guided_regex": pattern},
    )
    for choice in sampled.choices:
        assert re.fullmatch(pattern, choice.message.content or ""), choice.message.content
        assert choice.finish_reason == "stop"  # nothing could follow the last digit
    answer = r"The capital of France is (Paris|Rome|Berlin)\."
    stream = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        temperature=0,
        max_tokens=24,
        stream=True,
        extra_body={"structured_outputs": {"regex": answer}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "The capital of France is Paris.", text


#: A small GBNF grammar: one JSON object with a name and an age.
PERSON_GBNF = r"""
root ::= "{" ws "\"name\":" ws name "," ws "\"age\":" ws age ws "}"
name ::= "\"" [A-Z] [a-z]{1,15} "\""
age  ::= [1-9] [0-9]?
ws   ::= " "?
"""


def test_a_gbnf_grammar_shapes_the_answer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Describe a person as JSON with name and age."}],
        temperature=0.8,
        n=3,
        seed=1,
        max_tokens=40,
        extra_body={"grammar": PERSON_GBNF},
    )
    for choice in resp.choices:
        person = json.loads(choice.message.content or "")
        assert set(person) == {"name", "age"}
        assert re.fullmatch("[A-Z][a-z]+", person["name"])
        assert 1 <= person["age"] <= 99
        assert choice.finish_reason == "stop"
    refused = client.with_options(max_retries=0).chat.completions
    with pytest.raises(openai.BadRequestError) as info:
        refused.create(
            model="default", messages=MESSAGES, extra_body={"grammar": 'root ::= root "x"'}
        )
    assert info.value.body["param"] == "grammar"  # type: ignore[index]


def test_echo_with_logprobs_scores_a_prompt_like_an_evaluation_harness(
    client: openai.OpenAI,
) -> None:
    def score(text: str) -> tuple[list[str], list[float | None]]:
        resp = client.completions.create(
            model="default", prompt=text, max_tokens=1, temperature=0, echo=True, logprobs=1
        )
        lp = resp.choices[0].logprobs
        assert lp is not None
        assert lp.tokens is not None
        assert lp.token_logprobs is not None
        n = len(lp.tokens) - 1  # the last entry is the generated token
        assert "".join(lp.tokens[:n]) == text
        return lp.tokens[:n], lp.token_logprobs[:n]

    tokens, scores = score("The capital of France is Paris")
    assert scores[0] is None
    assert all(s is not None and s <= 0 for s in scores[1:])
    wrong_tokens, wrong = score("The capital of France is London")
    assert tokens[:-1] == wrong_tokens[:-1]
    assert scores[:-1] == pytest.approx(wrong[:-1], abs=1e-4)  # the same context scores alike
    assert scores[-1] is not None
    assert wrong[-1] is not None
    assert scores[-1] > wrong[-1] + 1.0  # the model knows its capitals


def test_responses_api_function_calls(client: openai.OpenAI) -> None:
    weather = {
        "type": "function",
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    resp = client.responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[weather],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=64,
    )
    (call,) = [item for item in resp.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    # The call and its output go back in; the model answers in text.
    follow = client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"},
        ],
        tools=[weather],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_output_tokens=32,
    )
    assert follow.output_text


def test_chat_json_mode_gives_json_objects(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {
            "role": "user",
            "content": "Describe a cat named Tom, 3 years old, as JSON with name, age and color.",
        }
    ]
    resp = client.chat.completions.create(
        model="default",
        messages=messages,
        max_tokens=200,
        temperature=0.8,
        seed=3,
        n=3,
        response_format={"type": "json_object"},
    )
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content or ""), dict)


class Cat(BaseModel):
    name: str = Field(min_length=1, max_length=20)  # minLength and maxLength
    age: int = Field(ge=0, le=30)  # minimum and maximum
    adopted: datetime.date  # format: date
    color: Literal["black", "white", "orange", "grey"]
    toys: list[str] = Field(max_length=3)  # maxItems: this small model repeats itself


def test_chat_structured_output_parses_into_a_pydantic_model(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Describe a cat named Tom, 3 years old, and its toys."}
    ]
    # The client sends Cat's strict JSON Schema and parses each answer back into a Cat.
    resp = client.chat.completions.parse(
        model="default",
        messages=messages,
        max_tokens=200,
        temperature=0,
        response_format=Cat,
    )
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Cat)
    with pytest.raises(openai.BadRequestError, match="pattern"):
        client.chat.completions.create(
            model="default",
            messages=messages,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "cat",
                    "schema": {
                        "type": "object",
                        "properties": {"id": {"pattern": "^(?!0)[0-9]+$"}},
                    },
                },
            },
        )


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


WEATHER_QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather like in Paris today?"}
]


def test_chat_tool_call_parses_and_round_trips(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(GetWeather)  # strict, as the client makes it
    resp = client.chat.completions.parse(
        model="default",
        messages=WEATHER_QUESTION,
        tools=[tool],
        tool_choice="required",
        max_tokens=100,
        temperature=0,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls
    for call in calls:
        assert call.type == "function"
        assert call.function.name == "GetWeather"
        assert isinstance(call.function.parsed_arguments, GetWeather)
    # The call and its result go back into the conversation; the answer is text.
    follow_up: list[ChatCompletionMessageParam] = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "type": "function",
                    "function": {"name": "GetWeather", "arguments": calls[0].function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": "18 degrees and sunny"},
    ]
    resp2 = client.chat.completions.create(
        model="default",
        messages=follow_up,
        tools=[tool],
        tool_choice="none",
        max_tokens=24,
        temperature=0,
    )
    assert resp2.choices[0].message.content
    assert not resp2.choices[0].message.tool_calls


def test_chat_tool_calls_stream_and_auto_is_call_or_text(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(GetWeather)
    stream = client.chat.completions.create(
        model="default",
        messages=WEATHER_QUESTION,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        for call in c.choices[0].delta.tool_calls or []
        if call.function is not None
    )
    assert len([c for c in chunks if c.choices[0].delta.tool_calls]) > 1  # streamed in pieces
    GetWeather.model_validate_json(arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Under "auto", each choice is either a valid call or a text answer, never a broken call.
    resp = client.chat.completions.create(
        model="default",
        messages=WEATHER_QUESTION,
        tools=[tool],
        max_tokens=100,
        temperature=1.0,
        seed=1,
        n=6,
    )
    for choice in resp.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                GetWeather.model_validate_json(call.function.arguments)
        elif choice.finish_reason == "stop":  # ("length": a call cut short comes as text)
            assert choice.message.content is not None
            assert not choice.message.content.lstrip().startswith("[")


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 8


def test_completion_length_and_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="default",
        prompt="Once upon a time",
        max_tokens=5,
        logprobs=2,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens or []) == 5
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 5


async def test_async_client_stream_and_seed(server: ServeProcess) -> None:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    texts = []
    for _ in range(2):
        resp = await client.completions.create(
            model="default", prompt="The sky is", max_tokens=6, temperature=0.9, seed=42
        )
        texts.append(resp.choices[0].text)
    assert texts[0] == texts[1]
    stream = await client.completions.create(
        model="default", prompt="Hello", max_tokens=4, stream=True
    )
    pieces = [c.choices[0].text async for c in stream if c.choices]
    assert pieces
    await client.close()


def test_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="default", messages=MESSAGES, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="default", prompt="word " * 10000, max_tokens=1)
    assert long.value.code == "context_length_exceeded"


def _post_json(server: ServeProcess, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_tokenize_counts_what_chat_uses(server: ServeProcess, client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a color."}]
    counted = _post_json(server, "/tokenize", {"model": "default", "messages": messages})
    resp = client.chat.completions.create(model="default", messages=messages, max_tokens=1)
    assert resp.usage is not None
    assert counted["count"] == resp.usage.prompt_tokens == len(counted["tokens"])
    text = _post_json(server, "/detokenize", {"model": "default", "tokens": counted["tokens"]})
    assert text["prompt"].startswith("<|im_start|>")
    assert "Name a color." in text["prompt"]


def test_embeddings_of_the_real_model(client: openai.OpenAI) -> None:
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on a mat.",
        "Quarterly revenue rose five percent on strong bond sales.",
    ]
    # The openai client asks for base64 and decodes it; floats must say the same.
    packed = client.embeddings.create(model="default", input=texts)
    plain = client.embeddings.create(model="default", input=texts, encoding_format="float")
    vectors = [d.embedding for d in packed.data]
    assert [d.index for d in packed.data] == [0, 1, 2]
    assert all(len(v) == 576 for v in vectors)  # SmolLM2-135M's hidden size
    for a, b in zip(vectors, (d.embedding for d in plain.data), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert packed.usage.prompt_tokens == packed.usage.total_tokens > 12

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors

    assert all(cos(v, v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    # Paraphrases sit closer than unrelated text.
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    short = client.embeddings.create(model="default", input=texts[0], dimensions=64)
    assert len(short.data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="default", input="")


def test_raw_malformed_bodies(server: ServeProcess) -> None:
    for body in (b"{", b"[]", b'{"model": 3}', b"\xff\xfe"):
        req = urllib.request.Request(
            server.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400
        assert "error" in json.loads(err.value.read())


def test_status_metrics_openapi(server: ServeProcess) -> None:
    status = server.get_json("/v1/status")
    assert status["state"] == "ready"
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'inferno:kv_cache_usage_perc{model="default"}' in text
    doc = server.get_json("/openapi.json")
    assert "/v1/chat/completions" in doc["paths"]  # type: ignore[operator]
