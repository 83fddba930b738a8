"""aiohttp middlewares: request id and access log, error bodies, CORS, API keys, rate limit.

Order (outermost first): request id/logging -> errors -> CORS -> auth -> rate limit -> handler,
so every response, even a 401 or a 429, carries the request id and an OpenAI error body.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from inferno_backend.api.errors import (
    APIError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    error_body,
    error_response,
)
from inferno_backend.api.keys import CLIENT_KEY, REQUEST_ID
from inferno_backend.config import ServeConfig
from inferno_backend.metrics import Metrics

__all__ = ["RateLimiter", "build_middlewares", "key_matches"]

log = structlog.get_logger("inferno_backend.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Paths open without a key: probes, metrics, the API description and the load status.
_OPEN_PREFIXES = ("/health/", "/metrics", "/openapi.json", "/v1/status")
_ADMIN_PREFIX = "/v1/admin/"
#: Paths that need a key when keys are configured, and count against the rate limit: the
#: OpenAI routes, Ollama's, and the tokenizer's.
_KEYED_PREFIXES = ("/v1/", "/api/", "/tokenize", "/detokenize")


def _keyed(path: str) -> bool:
    return path.startswith(_KEYED_PREFIXES) and not path.startswith(_OPEN_PREFIXES)


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Whether ``candidate`` equals one of ``keys``, comparing in constant time.

    Every key is compared (no early exit) so timing does not reveal which prefix matched.
    """
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client key: ``rpm`` requests a minute, ``burst`` at once.

    Args:
        rpm: refill rate in requests per minute.
        burst: bucket capacity.
        clock: monotonic seconds (injectable for tests).
        max_keys: buckets kept; the least recently used are dropped beyond it.
    """

    def __init__(
        self,
        rpm: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.rate = rpm / 60.0
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float | None:
        """Take one token for ``key``; None if granted, else seconds until one is available."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket  # re-insert: dict order is recency order
            if len(self._buckets) > self._max_keys:
                del self._buckets[next(iter(self._buckets))]
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return (1 - bucket.tokens) / self.rate


def build_middlewares(config: ServeConfig, metrics: Metrics) -> list[web.middleware]:  # type: ignore[valid-type]
    """The middleware chain for ``config`` (see the module docstring for the order)."""
    limiter = (
        RateLimiter(config.rate_limit_rpm, config.rate_limit_burst)
        if config.rate_limit_rpm
        else None
    )

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        request_id = request_id[:128]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        request[REQUEST_ID] = request_id
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
            return response
        finally:
            route = request.match_info.route.resource
            metrics.http_requests.labels(
                route.canonical if route is not None else "unmatched", str(status)
            ).inc()
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=status,
                seconds=round(time.perf_counter() - start, 6),
            )

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except APIError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            body = error_body(
                f"the request body exceeds the limit of {config.max_body_bytes} bytes",
                "invalid_request_error",
                code="request_too_large",
            )
            return web.json_response(body, status=413)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = f"{exc.reason}: {request.method} {request.path}"
            type_ = "invalid_request_error" if exc.status < 500 else "server_error"
            response = web.json_response(error_body(message, type_), status=exc.status)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:
            log.exception("unhandled error")
            return web.json_response(
                error_body("internal server error", "server_error"), status=500
            )

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and (
            "*" in config.cors_origins or origin in config.cors_origins
        )
        if (
            request.method == "OPTIONS"
            and allowed
            and "Access-Control-Request-Method" in (request.headers)
        ):
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed and origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = (
                "*" if "*" in config.cors_origins else origin
            )
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After"
        return response

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(_ADMIN_PREFIX):
            if config.admin_key is None:
                raise PermissionDeniedError("the admin API is disabled (no admin_key configured)")
            token = _bearer(request)
            if token is None or not key_matches(token, (config.admin_key,)):
                raise AuthenticationError("a valid admin key is required (Authorization: Bearer)")
            request[CLIENT_KEY] = "admin"
        elif config.api_keys and _keyed(path):
            token = _bearer(request)
            if token is None:
                raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
            if not key_matches(token, config.api_keys):
                raise AuthenticationError("invalid API key")
            request[CLIENT_KEY] = "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        return await handler(request)

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if limiter is not None and _keyed(request.path):
            key = request.get(CLIENT_KEY) or f"ip:{request.remote}"
            wait = limiter.acquire(key)
            if wait is not None:
                raise RateLimitError(
                    f"rate limit of {config.rate_limit_rpm:g} requests per minute exceeded; "
                    f"retry in {math.ceil(wait)} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await handler(request)

    @web.middleware
    async def not_found_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            raise NotFoundError(f"no route for {request.method} {request.path}") from None

    return [request_context, errors, cors, auth, rate_limit, not_found_json]
