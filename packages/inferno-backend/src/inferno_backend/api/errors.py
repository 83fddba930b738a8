"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Handlers raise `APIError` (or a subclass); the error middleware renders it. Validation errors
from pydantic become 400s that name the offending field.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "error_body",
    "error_response",
    "from_validation_error",
]


class APIError(Exception):
    """An error answered to the client with an OpenAI error body."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequestError(APIError):
    """400: the body or a parameter is invalid."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(APIError):
    """401: missing or wrong API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """403: the key is valid but may not do this."""

    status = 403
    type = "permission_error"


class NotFoundError(APIError):
    """404: unknown model or route."""

    status = 404
    type = "invalid_request_error"


class RateLimitError(APIError):
    """429: too many requests for this key; ``Retry-After`` says when to come back."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailableError(APIError):
    """503: the daemon is starting, draining or overloaded."""

    status = 503
    type = "service_unavailable"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: APIError) -> web.Response:
    """Render ``exc`` as a JSON response with its status and headers."""
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    return web.json_response(body, status=exc.status, headers=exc.headers)


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "none", "bytes", "dict", "list"})


def _is_union_tag(segment: object) -> bool:
    """Whether a location segment names a union member (``str``, ``list[...]``, a model)."""
    if not isinstance(segment, str) or not segment:
        return False
    # API field names are lower snake case; pydantic names union members by their type.
    return segment in _SCALAR_TAGS or "[" in segment or segment[0].isupper()


def _is_branch_mismatch(err: Any) -> bool:
    """A union member that failed as a whole: the input has another member's shape."""
    loc = err["loc"]
    return bool(loc) and _is_union_tag(loc[-1])


def from_validation_error(exc: ValidationError) -> BadRequestError:
    """A 400 naming the first invalid field of a pydantic validation failure.

    For a field that accepts several shapes (``stop``: a string or a list of strings), the
    members the input does not have the shape of are passed over, so the message names the
    real problem (an empty string inside the list) instead of "should be a valid string".
    """
    errors = exc.errors(include_url=False)
    err = errors[0]
    if err["type"] == "json_invalid":
        return BadRequestError(f"the body is not valid JSON: {err['msg']}", code="invalid_json")
    if err["type"] == "model_type" and not err["loc"]:
        return BadRequestError("the body must be a JSON object", code="invalid_body")
    relevant = [e for e in errors if not _is_branch_mismatch(e)] or errors
    err = relevant[0]
    param = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p)) or None
    msg = str(err["msg"]).removeprefix("Value error, ")
    if param is None and ": " in msg:
        # Cross-field rules raise "field: problem"; report that field as the param.
        param = msg.split(": ", 1)[0]
        message = msg
    elif param and not msg.startswith(f"{param}: "):
        message = f"{param}: {msg}"
    else:
        message = msg
    extra = len(relevant) - 1
    if extra:
        message += f" (and {extra} more problem{'s' if extra > 1 else ''})"
    return BadRequestError(message, param=param, code="invalid_value")
