"""Auth, admin key, rate limit, CORS and request ids."""

from __future__ import annotations

import structlog
from inferno_backend.api.middleware import RateLimiter, key_matches
from inferno_backend.config import ServeConfig

from .conftest import MakeClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def test_key_matches_any_configured_key() -> None:
    assert key_matches("b", ("a", "b"))
    assert not key_matches("c", ("a", "b"))
    assert not key_matches("", ("a",))


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(60, 2, clock=lambda: now[0])
    assert limiter.acquire("k") is None
    assert limiter.acquire("k") is None
    wait = limiter.acquire("k")
    assert wait is not None
    assert 0.9 < wait <= 1.0
    assert limiter.acquire("other") is None
    now[0] = 1.0
    assert limiter.acquire("k") is None


async def test_api_keys_guard_v1_but_not_probes(make_client: MakeClient) -> None:
    client, _ = await make_client(ServeConfig(warmup=False, api_keys=("k1", "k2")))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    bad = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    ok = await client.get("/v1/models", headers={"Authorization": "Bearer k2"})
    assert ok.status == 200
    assert (await client.get("/health/live")).status == 200
    assert (await client.get("/v1/status")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_admin_needs_its_own_key(make_client: MakeClient) -> None:
    client, _ = await make_client(ServeConfig(warmup=False, api_keys=("k",), admin_key="adm"))
    body = {"model": "default"}
    user = await client.post(
        "/v1/admin/models/unload", json=body, headers={"Authorization": "Bearer k"}
    )
    assert user.status == 401
    disabled, _ = await make_client(ServeConfig(warmup=False))
    assert (await disabled.post("/v1/admin/models/unload", json=body)).status == 403


async def test_rate_limit_answers_429_with_retry_after(make_client: MakeClient) -> None:
    client, _ = await make_client(
        ServeConfig(warmup=False, api_keys=("a", "b"), rate_limit_rpm=1, rate_limit_burst=2)
    )
    a = {"Authorization": "Bearer a"}
    assert (await client.get("/v1/models", headers=a)).status == 200
    assert (await client.get("/v1/models", headers=a)).status == 200
    limited = await client.get("/v1/models", headers=a)
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await limited.json())["error"]["type"] == "rate_limit_error"
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer b"})).status == 200


async def test_cors(make_client: MakeClient) -> None:
    client, _ = await make_client(ServeConfig(warmup=False, cors_origins=("https://app.example",)))
    pre = await client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = await client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    ok = await client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_request_id_is_on_every_log_line(make_client: MakeClient) -> None:
    client, _ = await make_client()
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        resp = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc123"}
        )
        assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "abc123"
    mine = [e for e in logs if e.get("request_id") == "abc123"]
    assert any(e["event"] == "request" and e["status"] == 200 for e in mine)
    assert all(
        e.get("request_id") == "abc123" for e in logs if e.get("path") == "/v1/chat/completions"
    )
