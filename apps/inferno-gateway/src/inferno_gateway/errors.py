"""Typed errors of the gateway, answered to clients as OpenAI error bodies.

``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status, so the
official ``openai`` client raises the same exception classes it raises against one daemon.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = [
    "BadRequestError",
    "GatewayError",
    "ModelNotFoundError",
    "NoWorkerError",
    "PayloadTooLargeError",
    "RouteNotFoundError",
    "UpstreamFailedError",
    "error_body",
]


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class GatewayError(Exception):
    """An error the gateway answers itself (no worker produced it)."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def response(self) -> web.Response:
        """This error as a JSON response with its status."""
        body = error_body(self.message, self.type, param=self.param, code=self.code)
        return web.json_response(body, status=self.status)


class BadRequestError(GatewayError):
    """400: the body is not JSON, not an object, or lacks a usable ``model``."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLargeError(GatewayError):
    """413: the body is larger than the gateway accepts."""

    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class ModelNotFoundError(GatewayError):
    """404: no known worker serves the requested model."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ResponseNotFoundError(GatewayError):
    """404: no ready worker keeps the response asked for (Responses API)."""

    status = 404
    type = "invalid_request_error"
    code = "response_not_found"


class RouteNotFoundError(GatewayError):
    """404: the gateway has no such route."""

    status = 404
    type = "invalid_request_error"
    code = "unknown_route"


class NoWorkerError(GatewayError):
    """503: no ready worker can take the request right now (none known, or all draining)."""

    status = 503
    type = "service_unavailable"
    code = "no_worker_available"


class UpstreamFailedError(GatewayError):
    """502: every worker tried failed before answering."""

    status = 502
    type = "server_error"
    code = "upstream_failed"
