"""A real ``inferno serve --speculative-tokens 4`` on the default model: the text of a greedy
chat that quotes its prompt equals the plain engine's, streamed or not, and the metrics count
the drafts it kept."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from inferno_inference.types import SamplingParams
from inferno_models import LlamaLoader, default_model_path

from .local_engine import local_text
from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = (
    "Repeat this sentence exactly: The lighthouse at Port Ellen was built in 1832 from granite "
    "quarried on the island, and its lamp burned whale oil until 1870."
)
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    daemon = ServeProcess("--speculative-tokens", "4").start()
    yield daemon
    assert daemon.stop() == 0


def _plain_text() -> str:
    loaded = LlamaLoader().load(default_model_path())
    assert loaded.chat_template is not None
    rendered = loaded.chat_template.render(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True
    )
    prompt = loaded.tokenizer.encode(rendered, add_special_tokens=False)
    return local_text(loaded, prompt, SamplingParams(max_tokens=MAX_TOKENS, temperature=0))


def _counter(text: str, name: str) -> float:
    match = re.search(rf'^{re.escape(name)}_total{{model="default"}} (\S+)$', text, re.M)
    assert match, name
    return float(match.group(1))


def test_speculating_daemon_answers_as_the_plain_engine(server: ServeProcess) -> None:
    expected = _plain_text()
    assert "1832" in expected  # the model does quote its prompt
    messages = [{"role": "user", "content": QUESTION}]
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        out = client.chat.completions.create(
            model="default", messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        stream = client.chat.completions.create(
            model="default", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert out.choices[0].message.content == expected
    assert streamed == expected
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    drafted = _counter(metrics, "inferno:spec_decode_draft_tokens")
    kept = _counter(metrics, "inferno:spec_decode_accepted_tokens")
    assert 0 < kept <= drafted
    status = server.get_json("/v1/status")
    rate = status["models"]["default"]["spec_decode_acceptance_rate"]  # type: ignore[index]
    assert rate == pytest.approx(kept / drafted, abs=1e-5)
