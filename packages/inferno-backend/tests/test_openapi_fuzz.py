"""Schemathesis fuzz of the API from its own OpenAPI description, against the app over fakes.

For every operation in ``/openapi.json``, schema-valid and schema-violating requests are sent to a
live app (over `FakeEngine`) and each response must: not be a 5xx, have a status and content type
the description declares and a body matching its schema, and, when it is a 4xx, be an OpenAI
error body ``{"error": {"message", "type", "param", "code"}}``.

Schemathesis' "schema-valid request accepted" check is left out on purpose: the server enforces
cross-field rules the description cannot state (``best_of`` must equal ``n``, ``top_logprobs``
needs ``logprobs``, ``stream_options`` needs ``stream``) and answers them with a 400.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from inferno_backend.api import build_app
from inferno_backend.config import ServeConfig
from inferno_backend.openapi import build_openapi
from inferno_backend.testing import fake_orchestrator
from schemathesis import checks as st_checks
from schemathesis.core.result import Err

ADMIN_KEY = "adm"
SCHEMA = schemathesis.openapi.from_dict(build_openapi())


def _operations() -> dict[str, schemathesis.APIOperation[Any, Any, Any, Any]]:
    operations = {}
    for result in SCHEMA.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the description itself is invalid
        operations[result.ok().label] = result.ok()
    return operations


OPERATIONS = _operations()


def openai_error_body(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> None:
    """Every 4xx carries ``{"error": {"message", "type", "param", "code"}}``."""
    if not 400 <= response.status_code < 500:
        return
    body = json.loads(response.content)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    openai_error_body,
]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The app over fakes, served on a free localhost port by its own loop in a thread (aiohttp
    is neither WSGI nor ASGI, and schemathesis calls it over HTTP with ``requests``)."""
    loop = asyncio.new_event_loop()
    runner_box: list[web.AppRunner] = []

    async def start() -> str:
        orchestrator = fake_orchestrator(ServeConfig(warmup=False, admin_key=ADMIN_KEY))
        runner = web.AppRunner(build_app(orchestrator), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runner_box.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    thread = threading.Thread(target=loop.run_forever, name="fuzzed-app", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        if runner_box:
            asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One HTTP session for every call (keep-alive)."""
    with requests.Session() as s:
        yield s


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation_survives_fuzzing(label: str, base_url: str, session: requests.Session) -> None:
    operation = OPERATIONS[label]

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=operation.as_strategy())
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=base_url,
            session=session,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            checks=CHECKS,
        )

    fuzz()


def test_every_route_is_described() -> None:
    assert set(OPERATIONS) == {
        "GET /v1/models",
        "GET /v1/models/{model}",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/responses",
        "GET /v1/responses/{response_id}",
        "DELETE /v1/responses/{response_id}",
        "POST /v1/embeddings",
        "POST /tokenize",
        "POST /detokenize",
        "GET /v1/status",
        "POST /v1/admin/models/load",
        "POST /v1/admin/models/unload",
        "GET /health/live",
        "GET /health/ready",
        "GET /health/startup",
        "GET /metrics",
        "POST /api/chat",
        "POST /api/generate",
        "POST /api/embed",
        "POST /api/embeddings",
        "POST /api/show",
        "GET /api/tags",
        "GET /api/ps",
        "GET /api/version",
    }
