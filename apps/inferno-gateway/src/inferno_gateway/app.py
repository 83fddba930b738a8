"""The gateway's HTTP app: the daemon's OpenAI routes, proxied, plus its own health and metrics.

Routes: ``GET /v1/models`` (the union of the ready workers' models), ``GET /v1/models/{id}``,
``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/responses``,
``POST /v1/embeddings``, ``POST /tokenize`` and ``POST /detokenize``, and Ollama's
``POST /api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/show`` (forwarded to a worker
serving the body's ``model``; JSON-line streams relayed line by line), ``GET /api/tags`` and
``GET /api/version``, ``GET /health/live``,
``/health/ready`` and ``/health/startup``, ``GET /metrics`` and ``GET /gateway/workers`` (the
live table, for operators).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from inferno_health import Probe

from inferno_gateway.errors import (
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    NoWorkerError,
    PayloadTooLargeError,
    ResponseNotFoundError,
    RouteNotFoundError,
)
from inferno_gateway.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from inferno_gateway.gateway import Gateway

__all__ = ["GATEWAY", "build_app"]

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Render gateway errors and unknown routes as OpenAI error bodies."""
    try:
        return await handler(request)
    except GatewayError as exc:
        request.app[GATEWAY].metrics.rejected.labels(
            status=str(exc.status), code=exc.code or ""
        ).inc()
        return exc.response()
    except web.HTTPNotFound:
        return RouteNotFoundError(f"no route {request.method} {request.path}").response()
    except web.HTTPMethodNotAllowed:
        err = BadRequestError(f"{request.method} is not allowed on {request.path}")
        err.status = 405
        return err.response()


def build_app(gateway: Gateway) -> web.Application:
    """The aiohttp application serving ``gateway``.

    The app starts the gateway (watch, client session, health checks) on start-up and stops it
    on clean-up; starting a gateway that its owner already started is a no-op.
    """
    app = web.Application(middlewares=[_errors], client_max_size=gateway.config.max_body_bytes)
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model}", _get_model)
    app.router.add_post("/v1/chat/completions", _proxy)
    app.router.add_post("/v1/completions", _proxy)
    app.router.add_post("/v1/responses", _proxy)
    app.router.add_get("/v1/responses/{response_id}", _kept_response)
    app.router.add_delete("/v1/responses/{response_id}", _kept_response)
    app.router.add_post("/v1/embeddings", _proxy)
    app.router.add_post("/tokenize", _proxy)
    app.router.add_post("/detokenize", _proxy)
    # Ollama's API: the workers answer it; listings come from the worker table.
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"):
        app.router.add_post(path, _proxy)
    app.router.add_get("/api/tags", _ollama_tags)
    app.router.add_get("/api/version", _ollama_version)
    app.router.add_get("/health/live", _probe(Probe.LIVENESS))
    app.router.add_get("/health/ready", _probe(Probe.READINESS))
    app.router.add_get("/health/startup", _probe(Probe.STARTUP))
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/gateway/workers", _workers)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    yield
    await gateway.stop()


def _model_entry(name: str, created: float, workers: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(created),
        "owned_by": "inferno",
        "workers": workers,
    }


async def _list_models(request: web.Request) -> web.Response:
    table = request.app[GATEWAY].table
    ready = table.ready_workers
    data = [
        _model_entry(name, created, sum(name in w.models for w in ready))
        for name, created in table.models().items()
    ]
    return web.json_response({"object": "list", "data": data})


async def _ollama_tags(request: web.Request) -> web.Response:
    """The models some ready worker serves, in Ollama's listing (``/api/show`` has details)."""
    table = request.app[GATEWAY].table
    models = []
    for name, created in table.models().items():
        when = datetime.datetime.fromtimestamp(created, datetime.UTC)
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": when.isoformat().replace("+00:00", "Z"),
                "size": 0,
                "digest": "",
                "details": {},
            }
        )
    return web.json_response({"models": models})


async def _ollama_version(request: web.Request) -> web.Response:
    return web.json_response({"version": importlib.metadata.version("inferno-gateway")})


async def _get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    table = request.app[GATEWAY].table
    created = table.models().get(name)
    if created is None:
        raise ModelNotFoundError(f"the model {name!r} does not exist", param="model")
    workers = sum(name in w.models for w in table.ready_workers)
    return web.json_response(_model_entry(name, created, workers))


async def _proxy(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    limit = gateway.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"the body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLargeError(f"the body is larger than {limit} bytes") from exc
    body = _parse(raw)
    model = body["model"]
    table = gateway.table
    if not table.serves(model):
        if not table.ready_workers:
            raise NoWorkerError("no worker is registered yet; try again shortly")
        known = ", ".join(table.models()) or "none"
        raise ModelNotFoundError(
            f"the model {model!r} does not exist (served: {known})", param="model"
        )
    pinned = None
    previous = body.get("previous_response_id") if request.path == "/v1/responses" else None
    if isinstance(previous, str):
        # A continuation runs where its conversation is kept.
        pinned = await gateway.forwarder.holder_of(request, previous)
        if pinned is None:
            raise ResponseNotFoundError(
                f"previous response {previous!r} not found on any worker",
                param="previous_response_id",
            )
    return await gateway.forwarder.forward(request, request.path, raw, body, pinned=pinned)


async def _kept_response(request: web.Request) -> web.StreamResponse:
    """``GET``/``DELETE /v1/responses/{id}``, answered by the worker that keeps it."""
    gateway = request.app[GATEWAY]
    rid = request.match_info["response_id"]
    holder = await gateway.forwarder.holder_of(request, rid)
    if holder is None:
        raise ResponseNotFoundError(f"response {rid!r} not found on any worker")
    route = "/v1/responses/{response_id}"
    return await gateway.forwarder.forward_to(request, holder, request.method, route)


def _parse(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request, with a string ``model``; 400 otherwise."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model: a non-empty string is required", param="model")
    return body


def _probe(probe: Probe) -> _Handler:
    async def handler(request: web.Request) -> web.Response:
        gateway = request.app[GATEWAY]
        snapshot = await gateway.health.check()
        result = snapshot.probe(probe)
        body = {
            "probe": probe.value,
            "ok": result.ok,
            "failures": [f.model_dump(mode="json") for f in result.failures],
            "workers": {"known": len(gateway.table), "ready": len(gateway.table.ready_workers)},
            "health": json.loads(snapshot.to_json()),
        }
        return web.json_response(body, status=200 if result.ok else 503)

    return handler


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _workers(request: web.Request) -> web.Response:
    table = request.app[GATEWAY].table
    return web.json_response({"workers": [w.as_dict() for w in table.workers]})
