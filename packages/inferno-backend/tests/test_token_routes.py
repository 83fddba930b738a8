"""``/tokenize`` and ``/detokenize`` against the fake model's byte tokenizer."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


async def test_tokenize_a_prompt_counts_what_a_completion_uses(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.post("/tokenize", json={"model": "default", "prompt": "Hé"})
    assert resp.status == 200
    body = await resp.json()
    # BOS, then one id per UTF-8 byte (byte + 3): as /v1/completions tokenizes a prompt.
    assert body["tokens"] == [1, ord("H") + 3, 0xC3 + 3, 0xA9 + 3]
    assert body["count"] == 4
    assert body["max_model_len"] > 0
    assert "token_strs" not in body
    completion = await client.post(
        "/v1/completions", json={"model": "default", "prompt": "Hé", "max_tokens": 1}
    )
    assert (await completion.json())["usage"]["prompt_tokens"] == body["count"]
    bare = await client.post(
        "/tokenize",
        json={
            "model": "default",
            "prompt": "H",
            "add_special_tokens": False,
            "return_token_strs": True,
        },
    )
    assert await bare.json() == {
        "count": 1,
        "max_model_len": body["max_model_len"],
        "tokens": [ord("H") + 3],
        "token_strs": ["<0x48>"],
    }


async def test_tokenize_messages_counts_what_a_chat_uses(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/tokenize", json=CHAT)
    body = await resp.json()
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert body["tokens"] == [b + 3 for b in text.encode()]  # the template writes specials
    chat = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1})
    assert (await chat.json())["usage"]["prompt_tokens"] == body["count"]
    open_turn = await client.post("/tokenize", json={**CHAT, "add_generation_prompt": False})
    assert (await open_turn.json())["count"] == body["count"] - len("<|im_start|>assistant\n")


async def test_detokenize_round_trips(client: TestClient[Any, Any]) -> None:
    ids = (
        await (await client.post("/tokenize", json={"model": "default", "prompt": "Zoë"})).json()
    )["tokens"]
    resp = await client.post("/detokenize", json={"model": "default", "tokens": ids})
    assert resp.status == 200
    assert await resp.json() == {"prompt": "Zoë"}
    empty = await client.post("/detokenize", json={"model": "default", "tokens": []})
    assert await empty.json() == {"prompt": ""}


async def test_bad_token_requests_are_400s_or_404s(client: TestClient[Any, Any]) -> None:
    cases = [
        ("/tokenize", {"model": "default"}, 400, None),  # neither prompt nor messages
        ("/tokenize", {**CHAT, "prompt": "x"}, 400, None),  # both
        ("/tokenize", {"model": "default", "prompt": 5}, 400, "prompt"),
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/detokenize", {"model": "default", "tokens": [3, 259]}, 400, "tokens"),
        ("/detokenize", {"model": "default", "tokens": [-1]}, 400, "tokens.0"),
        ("/detokenize", {"model": "default", "tokens": "abc"}, 400, "tokens"),
    ]
    for path, body, status, param in cases:
        resp = await client.post(path, json=body)
        assert resp.status == status, (path, body)
        error = (await resp.json())["error"]
        assert error["message"], (path, body)
        if param is not None:
            assert error["param"] == param, (path, body, error)


async def test_tokenize_messages_with_tools_counts_what_a_chat_with_them_uses(
    client: TestClient[Any, Any],
) -> None:
    tools = [{"type": "function", "function": {"name": "now", "description": "The time."}}]
    with_tools = await client.post("/tokenize", json={**CHAT, "tools": tools})
    counted = (await with_tools.json())["count"]
    plain = (await (await client.post("/tokenize", json=CHAT)).json())["count"]
    assert counted > plain  # the tools are described to the model
    chat = await client.post("/v1/chat/completions", json={**CHAT, "tools": tools, "max_tokens": 1})
    assert (await chat.json())["usage"]["prompt_tokens"] == counted
    bad = await client.post("/tokenize", json={"model": "default", "prompt": "x", "tools": tools})
    assert bad.status == 400
