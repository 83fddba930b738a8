"""A real ``inferno serve`` on the default model, driven by Ollama's own Python client."""

from __future__ import annotations

import math
from collections.abc import Iterator

import ollama
import openai
import pytest

from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    daemon = ServeProcess("--max-num-seqs", "8").start()
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def api(server: ServeProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url)
    yield client
    client.close()


def test_chat_answers_as_the_openai_route_does(server: ServeProcess, api: ollama.Client) -> None:
    resp = api.chat(model="default", messages=QUESTION, options=GREEDY)
    assert "Paris" in (resp.message.content or "")
    assert resp.done_reason in ("stop", "length")
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as oa:
        same = oa.chat.completions.create(
            model="default", messages=QUESTION, temperature=0, max_tokens=24
        )
    assert resp.message.content == same.choices[0].message.content
    assert same.usage is not None
    assert resp.prompt_eval_count == same.usage.prompt_tokens
    assert resp.eval_count == same.usage.completion_tokens
    streamed = list(api.chat(model="default", messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in streamed) == resp.message.content
    assert streamed[-1].done


def test_generate_continues_from_its_context(api: ollama.Client) -> None:
    first = api.generate(model="default", prompt="Name a colour.", options=GREEDY)
    assert first.response
    assert first.context is not None
    assert (first.eval_count or 0) > 0
    again = api.generate(
        model="default", prompt="Another one.", context=first.context, options=GREEDY
    )
    assert again.response
    assert again.prompt_eval_count is not None
    assert again.prompt_eval_count > len(first.context)  # the history came along


def test_embed_and_model_listing(api: ollama.Client) -> None:
    resp = api.embed(model="default", input=["The cat sat.", "A dog ran."])
    assert len(resp.embeddings) == 2
    for vec in resp.embeddings:
        assert len(vec) == 576  # SmolLM2-135M's hidden size
        assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-4)
    (model,) = api.list().models
    assert model.model == "default"
    assert model.details is not None
    assert model.details.family == "llama"
    assert model.details.parameter_size == "134.5M"
    shown = api.show("default")
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.block_count"] == 30
