"""The forwarder: send a request to a worker, retry what failed before the first byte, and
pipe streams through event by event.

What may be retried is decided by what the client has seen: until the gateway writes its first
byte to the client, any failure (refused connection, a worker that disconnects before or while
answering a non-streamed request, a draining worker's 503) moves the request to another
worker. Once a stream has started, a worker that dies ends it with an SSE error event followed
by ``data: [DONE]``, so clients see a clean, parseable error instead of a truncated body.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from inferno_gateway.errors import NoWorkerError, UpstreamFailedError, error_body
from inferno_gateway.metrics import GatewayMetrics
from inferno_gateway.policies import RouteRequest, RoutingPolicy, affinity_key
from inferno_gateway.table import Worker, WorkerTable

__all__ = ["WORKER_HEADER", "Forwarder"]

log = structlog.get_logger(__name__)

WORKER_HEADER = "X-Inferno-Worker"
"""Response header naming the worker that answered."""

_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "OpenAI-Organization")
_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Retry-After", "X-Request-Id")
# Failures of the worker side of a request; client-side failures are ConnectionResetError on
# writes to the gateway's own response, handled apart.
_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
# A partial SSE event is held until its terminating blank line arrives; a worker that never
# sends one (not SSE after all) is flushed at this size so nothing is buffered without bound.
_MAX_PENDING = 64 * 1024
_LARGE_BODY = 2**20


class Forwarder:
    """Routes one request through ``policy`` to a worker of ``table`` and relays the answer.

    ``session`` is the shared aiohttp client session (its connection pool is what makes the
    added latency small). ``max_attempts`` bounds the workers tried per request;
    ``cooldown_s`` is how long a worker whose connection failed gets no new traffic.
    """

    def __init__(
        self,
        table: WorkerTable,
        policy: RoutingPolicy,
        metrics: GatewayMetrics,
        session: aiohttp.ClientSession,
        *,
        max_attempts: int = 3,
        cooldown_s: float = 5.0,
        affinity_chars: int = 256,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 600.0,
    ) -> None:
        self.table = table
        self.policy = policy
        self.metrics = metrics
        self.session = session
        self.max_attempts = max_attempts
        self.cooldown_s = cooldown_s
        self.affinity_chars = affinity_chars
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )

    async def forward(
        self,
        request: web.Request,
        route: str,
        raw_body: bytes,
        body: Mapping[str, Any],
        *,
        pinned: Worker | None = None,
    ) -> web.StreamResponse:
        """Answer ``request`` (already validated: ``body["model"]`` is a served model); only
        on ``pinned`` when given (it holds state the request needs), without retries."""
        model = str(body["model"])
        target = RouteRequest(model, affinity_key(dict(body), self.affinity_chars))
        headers = _request_headers(request)
        tried: list[str] = []
        failures: list[str] = []
        while len(tried) < (1 if pinned is not None else self.max_attempts):
            candidates = [pinned] if pinned is not None else self.table.candidates(model, tried)
            if not candidates:
                break
            decision = self.policy.choose(candidates, target)
            self.metrics.decisions.labels(policy=self.policy.name, reason=decision.reason).inc()
            worker = decision.worker
            may_retry = len(tried) + 1 < self.max_attempts and len(candidates) > 1
            outcome = await self._attempt(request, worker, route, raw_body, headers, may_retry)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            tried.append(worker.id)
            failures.append(outcome)
        if not tried:
            raise NoWorkerError(f"no ready worker serves the model {model!r} right now")
        raise UpstreamFailedError(
            f"{len(tried)} worker(s) failed before answering: {'; '.join(failures)}"
        )

    async def forward_to(
        self, request: web.Request, worker: Worker, method: str, route: str
    ) -> web.StreamResponse:
        """Send a bodiless ``method`` request for ``request.path`` to ``worker`` and relay its
        answer; ``route`` names it in the metrics (the path template, not the path)."""
        outcome = await self._attempt(
            request,
            worker,
            route,
            b"",
            _request_headers(request),
            False,
            method=method,
            path=request.path,
        )
        if isinstance(outcome, web.StreamResponse):
            return outcome
        raise UpstreamFailedError(f"1 worker(s) failed before answering: {outcome}")

    async def holder_of(self, request: web.Request, response_id: str) -> Worker | None:
        """The ready worker that keeps the Responses API response ``response_id`` (each
        worker keeps its own), asked of every one at once; None when none has it."""
        headers = _request_headers(request)
        timeout = aiohttp.ClientTimeout(total=self.timeout.sock_connect or 2.0)

        async def has(worker: Worker) -> bool:
            url = f"{worker.address}/v1/responses/{response_id}"
            try:
                async with self.session.get(url, headers=headers, timeout=timeout) as resp:
                    return resp.status == 200
            except _UPSTREAM_ERRORS:
                return False

        workers = self.table.ready_workers
        found = await asyncio.gather(*(has(w) for w in workers))
        return next((w for w, hit in zip(workers, found, strict=True) if hit), None)

    async def _attempt(
        self,
        request: web.Request,
        worker: Worker,
        route: str,
        raw_body: bytes,
        headers: CIMultiDict[str],
        may_retry: bool,
        *,
        method: str = "POST",
        path: str | None = None,
    ) -> web.StreamResponse | str:
        """One try on ``worker``: the response sent to the client, or why it failed unseen."""
        worker.in_flight += 1
        worker.routed += 1
        self.metrics.add_in_flight(worker.id, 1)
        started = time.perf_counter()
        try:
            try:
                # Large bodies go as a stream so that aiohttp does not copy them in one go
                # on the event loop (and warn about it).
                data = raw_body if len(raw_body) < _LARGE_BODY else io.BytesIO(raw_body)
                upstream = await self.session.request(
                    method,
                    worker.address + (path or route),
                    data=data if method == "POST" else None,
                    headers=headers,
                    timeout=self.timeout,
                )
            except _UPSTREAM_ERRORS as exc:
                # A refused or timed-out connect says the worker is down; a pooled connection
                # dropped under us may only have been idle too long, so it costs no cool-down.
                down = isinstance(exc, aiohttp.ClientConnectorError | asyncio.TimeoutError)
                return self._failed(worker, "connect", exc, cooldown=down)
            self.metrics.first_byte.labels(route=route).observe(time.perf_counter() - started)
            done = False
            try:
                if upstream.status == 503 and may_retry:
                    # Draining or overloaded: nothing was generated, another worker may answer.
                    self.metrics.retries.labels(worker=worker.id, reason="unavailable").inc()
                    return f"{worker.id}: answered 503"
                framing = _FRAMINGS.get(upstream.content_type)
                if framing is None:
                    try:
                        payload = await upstream.read()
                    except _UPSTREAM_ERRORS as exc:
                        return self._failed(worker, "lost", exc)
                    done = True
                    self.metrics.requests.labels(
                        worker=worker.id, route=route, status=str(upstream.status)
                    ).inc()
                    return web.Response(
                        body=payload,
                        status=upstream.status,
                        headers=_response_headers(upstream, worker),
                    )
                response, done = await self._stream(request, upstream, worker, route, framing)
                return response
            finally:
                if done:
                    upstream.release()  # fully read: the connection goes back to the pool
                else:
                    upstream.close()  # closing aborts the generation on the worker
        finally:
            worker.in_flight -= 1
            self.metrics.add_in_flight(worker.id, -1)

    def _failed(
        self, worker: Worker, reason: str, exc: BaseException, *, cooldown: bool = True
    ) -> str:
        if cooldown:
            self.table.mark_unreachable(worker.id, self.cooldown_s)
        self.metrics.retries.labels(worker=worker.id, reason=reason).inc()
        log.warning("worker_failed", worker=worker.id, reason=reason, error=repr(exc))
        return f"{worker.id}: {reason} failed ({exc!r})"

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        worker: Worker,
        route: str,
        framing: _Framing,
    ) -> tuple[web.StreamResponse, bool]:
        """Relay a stream (server-sent events, or JSON lines) event by event; returns the
        response and whether it ended cleanly."""
        response = web.StreamResponse(
            status=upstream.status, headers=_response_headers(upstream, worker)
        )
        await response.prepare(request)
        pending = b""
        finished = False
        failure: str | None = None
        while not finished:
            try:
                chunk = await upstream.content.readany()
            except _UPSTREAM_ERRORS as exc:
                failure = repr(exc)
                break
            if not chunk:
                break
            pending += chunk
            # Forward every complete event at once, holding only a trailing partial one, so a
            # worker that dies mid-event never leaves half a JSON object in the client's stream.
            cut = framing.last_end(pending)
            if cut == 0 and len(pending) < _MAX_PENDING:
                continue
            out, pending = (pending[:cut], pending[cut:]) if cut else (pending, b"")
            finished = framing.is_last(out)
            try:
                await response.write(out)
            except ConnectionError:
                log.info("client_disconnected", worker=worker.id, route=route)
                self._count(worker, route, "499")
                return response, False
        if not finished:
            failure = failure or f"the worker closed the stream before {framing.end_name}"
            self.table.mark_unreachable(worker.id, self.cooldown_s)
            self.metrics.stream_errors.labels(worker=worker.id).inc()
            log.warning("stream_cut", worker=worker.id, route=route, error=failure)
            message = f"worker {worker.id} failed mid-stream: {failure}"
            event = error_body(message, "server_error", code="upstream_stream_error")
            try:
                await response.write(framing.failure(event, message))
            except ConnectionError:
                return response, False
        self._count(worker, route, str(upstream.status) if finished else "stream_error")
        try:
            await response.write_eof()
        except ConnectionError:
            log.info("client_disconnected", worker=worker.id, route=route)
        if finished:
            # Read the end of the chunked body after [DONE] (already relayed) so the connection
            # can go back to the pool; a worker that lingers just gets its connection closed.
            try:
                await asyncio.wait_for(upstream.content.read(), 1.0)
            except (*_UPSTREAM_ERRORS, TimeoutError):
                finished = False
        return response, finished

    def _count(self, worker: Worker, route: str, status: str) -> None:
        self.metrics.requests.labels(worker=worker.id, route=route, status=status).inc()


def _last_event_end(data: bytes) -> int:
    """Index just past the last blank line (the end of an SSE event), or 0 when none."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class _Framing:
    """How a stream's events end, which event is the last, and how to end a cut stream."""

    end_name = "its last event"

    def last_end(self, data: bytes) -> int:
        """Index just past the last complete event of ``data``, or 0 when none."""
        raise NotImplementedError

    def is_last(self, events: bytes) -> bool:
        """``events`` (complete ones) end the stream."""
        raise NotImplementedError

    def failure(self, event: dict[str, Any], message: str) -> bytes:
        """What ends a stream that its worker cut: an error, in the stream's own form."""
        raise NotImplementedError


class _ServerSentEvents(_Framing):
    """OpenAI's streams: ``data: {...}`` events, blank-line separated, ending ``[DONE]``."""

    end_name = "data: [DONE]"

    def last_end(self, data: bytes) -> int:
        return _last_event_end(data)

    def is_last(self, events: bytes) -> bool:
        return events.rstrip().endswith(b"data: [DONE]")

    def failure(self, event: dict[str, Any], message: str) -> bytes:
        return b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"


class _JsonLines(_Framing):
    """Ollama's streams: one JSON object a line, the last with ``done: true`` (or an error)."""

    end_name = "a line with done: true"

    def last_end(self, data: bytes) -> int:
        return data.rfind(b"\n") + 1

    def is_last(self, events: bytes) -> bool:
        lines = events.rstrip().rsplit(b"\n", 1)
        try:
            last = json.loads(lines[-1])
        except ValueError:
            return False
        return isinstance(last, dict) and (last.get("done") is True or "error" in last)

    def failure(self, event: dict[str, Any], message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"


_FRAMINGS: dict[str, _Framing] = {
    "text/event-stream": _ServerSentEvents(),
    "application/x-ndjson": _JsonLines(),
}


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name in _REQUEST_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    headers["X-Request-Id"] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    return headers


def _response_headers(upstream: aiohttp.ClientResponse, worker: Worker) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name in _RESPONSE_HEADERS:
        value = upstream.headers.get(name)
        if value is not None:
            headers[name] = value
    headers[WORKER_HEADER] = worker.id
    return headers
