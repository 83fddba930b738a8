"""A real ``inferno serve`` on a tiny Qwen3 GGUF whose chat template opens the think block for
the model (as DeepSeek-R1's does): the real engine's reasoning budget writes ``</think>`` after
that many tokens, the daemon splits the reasoning from the answer, and a JSON answer comes
after the thinking, read by the real ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from inferno_inference.types import SamplingParams
from inferno_models import LlamaLoader
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf

from .local_engine import local_text
from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: ChatML whose generation prompt opens the think block; earlier answers lose their reasoning.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'].split('</think>')[-1] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
BUDGET = 6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(architecture="qwen3", head_dim=32, llama3_rope=False)
    path = tmp_path_factory.mktemp("qwen3") / "tiny-thinker.gguf"
    return write_tiny_gguf(path, config, random_weights(config, seed=5), chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def client(model_path: Path) -> Iterator[openai.OpenAI]:
    daemon = ServeProcess("--model", str(model_path), "--served-model-name", "thinker").start()
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0) as api:
        yield api
    assert daemon.stop() == 0


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="thinker",
        messages=[{"role": "user", "content": "the theater"}],
        max_tokens=40,
        temperature=0,
        extra_body={"thinking_token_budget": BUDGET, **extra},
    )


def test_the_budget_ends_the_thinking_and_the_answer_follows(
    client: openai.OpenAI, model_path: Path
) -> None:
    out = _chat(client, ignore_eos=True)
    message = out.choices[0].message
    # The same prompt and budget in process: its text, split at the forced tag.
    loaded = LlamaLoader().load(model_path)
    assert loaded.chat_template is not None
    prompt = loaded.chat_template.render([{"role": "user", "content": "the theater"}])
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    sampling = SamplingParams(
        max_tokens=40,
        temperature=0,
        ignore_eos=True,
        reasoning_end="</think>",
        reasoning_budget=BUDGET,
    )
    thought, tag, answer = local_text(loaded, ids, sampling).partition("</think>")
    assert tag  # the random model would not write it: the budget did
    assert getattr(message, "reasoning_content", None) == thought.strip()
    assert message.content == answer.lstrip()
    assert out.usage is not None
    assert out.usage.completion_tokens == 40
    details = out.usage.completion_tokens_details
    assert details is not None
    # The budget's tokens and the forced closing ones.
    assert BUDGET < (details.reasoning_tokens or 0) < 40


def test_json_comes_after_the_thinking(client: openai.OpenAI) -> None:
    out = _chat(client, response_format={"type": "json_object"})
    choice = out.choices[0]
    assert getattr(choice.message, "reasoning_content", None)
    content = choice.message.content or ""
    assert content.lstrip().startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
