"""Typed keys of the objects an app holds (aiohttp ``AppKey``)."""

from __future__ import annotations

from aiohttp import web

from inferno_backend.api.response_store import ResponseStore
from inferno_backend.config import ServeConfig
from inferno_backend.metrics import Metrics
from inferno_backend.orchestrator import Orchestrator

__all__ = [
    "ARRIVAL",
    "CLIENT_KEY",
    "CONFIG",
    "METRICS",
    "ORCHESTRATOR",
    "REQUEST_ID",
    "RESPONSES",
]

CONFIG = web.AppKey("config", ServeConfig)
METRICS = web.AppKey("metrics", Metrics)
ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
RESPONSES = web.AppKey("responses", ResponseStore)

REQUEST_ID = web.RequestKey("request_id", str)
ARRIVAL = web.RequestKey("arrival", float)
CLIENT_KEY = web.RequestKey("client_key", str)
