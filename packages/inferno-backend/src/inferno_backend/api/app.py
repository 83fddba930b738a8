"""`build_app`: the aiohttp application around an orchestrator."""

from __future__ import annotations

from aiohttp import web

from inferno_backend.api import (
    admin,
    embedding_routes,
    health_routes,
    ollama_routes,
    openai_routes,
    responses_routes,
    token_routes,
)
from inferno_backend.api.keys import CONFIG, METRICS, ORCHESTRATOR, RESPONSES
from inferno_backend.api.middleware import build_middlewares
from inferno_backend.api.response_store import ResponseStore
from inferno_backend.metrics import Metrics
from inferno_backend.orchestrator import Orchestrator

__all__ = ["build_app"]


def build_app(
    orchestrator: Orchestrator, *, metrics: Metrics | None = None, manage_lifecycle: bool = True
) -> web.Application:
    """The HTTP application serving ``orchestrator``.

    Args:
        orchestrator: the models and lifecycle to serve.
        metrics: the metrics registry (a fresh one reading the orchestrator's snapshots if None).
        manage_lifecycle: start the orchestrator when the app starts and stop (drain) it when
            the app shuts down.
    """
    config = orchestrator.config
    metrics = metrics or Metrics(orchestrator.snapshots)
    app = web.Application(
        middlewares=build_middlewares(config, metrics), client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
    app[RESPONSES] = ResponseStore(config.responses_kept)
    app[METRICS] = metrics
    app[ORCHESTRATOR] = orchestrator
    app.add_routes(openai_routes.routes)
    app.add_routes(responses_routes.routes)
    app.add_routes(token_routes.routes)
    app.add_routes(embedding_routes.routes)
    app.add_routes(ollama_routes.routes)
    app.add_routes(health_routes.routes)
    app.add_routes(admin.routes)
    # Imported here: the description reads the request models of this package, whose import
    # runs this package's __init__ (and so this module) first.
    from inferno_backend.openapi import build_openapi

    document = build_openapi()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
    if manage_lifecycle:

        async def lifecycle(app: web.Application) -> object:
            await orchestrator.start()
            yield
            await orchestrator.stop()

        app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]
    return app
