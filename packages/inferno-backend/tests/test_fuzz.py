"""Hypothesis fuzz of the request schemas against the app: no 5xx, every error an OpenAI body."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]), "content": values}
)
FIELDS = [
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "stream",
    "stream_options", "echo", "suffix", "best_of", "top_k", "ignore_eos", "guided_choice",
    "priority", "continue_final_message", "format", "options", "raw", "context", "think",
    "chat_template_kwargs", "reasoning_effort",
]  # fmt: skip
body = st.fixed_dictionaries(
    {"model": st.sampled_from(["default", "nope", 3])},
    optional={
        "messages": st.lists(message, max_size=3) | values,
        "prompt": st.text(max_size=30) | st.lists(st.integers(-5, 300), max_size=5) | values,
        **dict.fromkeys(FIELDS, values),
        "max_tokens": st.integers(-2, 40) | values,
        "n": st.integers(0, 3),
    },
)


ROUTES = ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=body, route=st.sampled_from(ROUTES))
async def test_no_server_errors(
    client: TestClient[Any, Any], payload: dict[str, Any], route: str
) -> None:
    resp = await client.post(route, data=json.dumps(payload).encode())
    text = await resp.text()
    assert resp.status < 500, text
    if resp.status >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
