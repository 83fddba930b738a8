"""Probes (``/health/live|ready|startup``), load status (``/v1/status``) and ``/metrics``.

Probes answer 200 when they pass and 503 when they fail, with inferno-health's machine-readable
snapshot (every provider, every probe and the reasons it fails) as the body.
"""

from __future__ import annotations

import json

from aiohttp import web
from inferno_health import Probe

from inferno_backend.api.keys import METRICS, ORCHESTRATOR
from inferno_backend.metrics import CONTENT_TYPE

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _probe(request: web.Request, probe: Probe) -> web.Response:
    checker = request.app[ORCHESTRATOR].health
    snapshot = await checker.check()
    result = snapshot.probe(probe)
    body = {
        "probe": probe.value,
        "ok": result.ok,
        "failures": [f.model_dump(mode="json") for f in result.failures],
        "state": request.app[ORCHESTRATOR].state.value,
        "health": json.loads(snapshot.to_json()),
    }
    return web.json_response(body, status=200 if result.ok else 503)


@routes.get("/health/live")
async def live(request: web.Request) -> web.Response:
    """Liveness: 503 means the process should be restarted."""
    return await _probe(request, Probe.LIVENESS)


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    """Readiness: 503 means route traffic elsewhere (starting, draining, unhealthy)."""
    return await _probe(request, Probe.READINESS)


@routes.get("/health/startup")
async def startup(request: web.Request) -> web.Response:
    """Startup: 503 until the daemon has finished starting."""
    return await _probe(request, Probe.STARTUP)


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    """Queue, running requests, KV usage and free slots; never prompts or keys."""
    return web.json_response(request.app[ORCHESTRATOR].status())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this app's registry."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
