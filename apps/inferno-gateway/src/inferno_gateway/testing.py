"""Test doubles: `FakeWorker`, a small aiohttp server that speaks the daemon's OpenAI routes.

It answers with canned text (``"<id>:0 <id>:1 ..."``, so a client can tell which worker
answered), streams SSE exactly like the daemon (``data: {...}`` events, then
``data: [DONE]``), records what it received and how many requests it held at once, and can
die abruptly mid-stream (``die_after``) or all at once (`kill`) to test failover.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from inferno_discovery import DiscoveryProvider, ServiceRegistration

__all__ = ["FakeWorker"]


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class FakeWorker:
    """An OpenAI-compatible worker with canned answers, for gateway tests and benchmarks.

    ``tokens`` pieces are produced per request, ``token_delay`` seconds apart. With
    ``die_after=n`` every stream is cut (the socket closed, no ``[DONE]``) after ``n`` chunks.
    With ``draining``, generation routes answer 503 like a daemon that is shutting down.
    With ``gate``, streams pause after their first chunk until the event is set (to prove that
    a proxy forwards events as they come).
    """

    def __init__(
        self,
        worker_id: str,
        *,
        models: Sequence[str] = ("default",),
        service: str = "inferno",
        tokens: int = 4,
        token_delay: float = 0.0,
        die_after: int | None = None,
        metadata: dict[str, str] | None = None,
        gate: asyncio.Event | None = None,
        draining: bool = False,
    ) -> None:
        self.id = worker_id
        self.models = tuple(models)
        self.service = service
        self.tokens = tokens
        self.token_delay = token_delay
        self.die_after = die_after
        self.metadata = dict(metadata or {})
        self.gate = gate
        self.draining = draining
        self.bodies: list[dict[str, Any]] = []
        """Every request body received, in arrival order."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._open: set[asyncio.Transport] = set()
        self.kept: dict[str, dict[str, Any]] = {}
        """The Responses API answers it keeps, by id (as a daemon keeps them)."""

    @property
    def registration(self) -> ServiceRegistration:
        """What this worker publishes in discovery."""
        return ServiceRegistration(
            id=self.id,
            service=self.service,
            address=self.url,
            models=self.models,
            version="fake",
            metadata=self.metadata,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeWorker:
        """Listen on ``host:port`` (a free port by default); sets ``url``."""
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/responses", self._generate)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._tokenize)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_get("/v1/responses/{rid}", self._kept)
        app.router.add_delete("/v1/responses/{rid}", self._kept)
        app.router.add_get("/health/ready", self._ready)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self

    async def register(self, discovery: DiscoveryProvider, ttl: float = 10.0) -> None:
        """Publish `registration` in ``discovery`` (kept alive by the provider)."""
        await discovery.register(self.registration, ttl)

    async def stop(self) -> None:
        """Stop listening after in-flight requests (briefly) finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def kill(self) -> None:
        """Die like a crashed process: cut every open connection and stop listening."""
        for transport in list(self._open):
            transport.abort()
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """``/tokenize`` (one id per character of the prompt) and ``/detokenize`` (the ids as
        text), with ``worker`` naming who answered."""
        body = await request.json()
        self.bodies.append(body)
        if "tokens" in body:
            return web.json_response(
                {"prompt": " ".join(map(str, body["tokens"])), "worker": self.id}
            )
        ids = [ord(c) for c in str(body.get("prompt", ""))]
        return web.json_response({"count": len(ids), "tokens": ids, "worker": self.id})

    async def _embeddings(self, request: web.Request) -> web.Response:
        """``/v1/embeddings``: one vector ``[len(input), index]`` per input (floats only), with
        ``worker`` naming who answered."""
        body = await request.json()
        self.bodies.append(body)
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(x)), float(i)]}
            for i, x in enumerate(inputs)
        ]
        tokens = sum(len(x) for x in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "worker": self.id,
            }
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if self.draining:
            error = {
                "message": "the daemon is draining",
                "type": "service_unavailable",
                "param": None,
                "code": "draining",
            }
            return web.json_response({"error": error}, status=503)
        if body.get("model") not in self.models:
            error = {
                "message": f"the model {body.get('model')!r} does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=404)
        transport = request.transport
        if transport is not None:
            self._open.add(transport)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            chat = request.path.endswith("/chat/completions")
            if request.path.endswith("/responses"):
                if body.get("stream"):
                    return web.json_response(
                        {"error": {"message": "the fake streams chat and completions only"}},
                        status=400,
                    )
                answer = self._response(body)
                self.kept[answer["id"]] = answer
                return web.json_response(answer)
            if body.get("stream"):
                return await self._stream(request, body, chat)
            if self.token_delay:
                await asyncio.sleep(self.token_delay * self.tokens)
            return web.json_response(self._full(body, chat))
        finally:
            self.in_flight -= 1
            if transport is not None:
                self._open.discard(transport)

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        """Ollama's ``/api/chat``: the pieces as JSON lines (``stream`` defaults to true), the
        last with ``done: true``; ``die_after`` and ``gate`` act as on the SSE streams."""
        body = await request.json()
        self.bodies.append(body)
        head = {"model": body.get("model"), "created_at": "2026-01-01T00:00:00Z"}
        pieces = self._pieces()
        done = {"done": True, "done_reason": "length", "eval_count": len(pieces)}
        if body.get("stream") is False:
            message = {"role": "assistant", "content": "".join(pieces)}
            return web.json_response({**head, "message": message, **done})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            if self.die_after is not None and i >= self.die_after:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if i == 1 and self.gate is not None:
                await self.gate.wait()
            line = {**head, "message": {"role": "assistant", "content": piece}, "done": False}
            await response.write(json.dumps(line).encode() + b"\n")
        closing = {**head, "message": {"role": "assistant", "content": ""}, **done}
        await response.write(json.dumps(closing).encode() + b"\n")
        await response.write_eof()
        return response

    async def _kept(self, request: web.Request) -> web.Response:
        """``GET``/``DELETE /v1/responses/{id}`` of the responses this worker made."""
        rid = request.match_info["rid"]
        answer = self.kept.get(rid)
        if answer is None:
            error = {"message": "not found", "type": "invalid_request_error", "param": None}
            return web.json_response({"error": {**error, "code": "response_not_found"}}, status=404)
        if request.method == "DELETE":
            del self.kept[rid]
            return web.json_response({"id": rid, "object": "response", "deleted": True})
        return web.json_response(answer)

    def _pieces(self) -> list[str]:
        return [f"{self.id}:{i} " for i in range(self.tokens)]

    def _response(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Responses API answer: one message of the worker's pieces."""
        text = "".join(self._pieces())
        part = {"type": "output_text", "text": text, "annotations": []}
        return {
            "id": f"resp_{self.id}_{len(self.bodies)}",
            "object": "response",
            "created_at": int(time.time()),
            "model": body["model"],
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [
                {
                    "id": "msg_fake",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            ],
            "usage": {
                "input_tokens": 1,
                "output_tokens": self.tokens,
                "total_tokens": 1 + self.tokens,
            },
            "parallel_tool_calls": False,
            "tool_choice": "auto",
            "tools": [],
        }

    def _full(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        text = "".join(self._pieces())
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": f"fake-{len(self.bodies)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": self.tokens,
                "total_tokens": 1 + self.tokens,
            },
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        head = {
            "id": f"fake-{len(self.bodies)}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }
        pieces = self._pieces()
        for i, piece in enumerate(pieces):
            if self.die_after is not None and i >= self.die_after:
                if request.transport is not None:
                    request.transport.abort()  # like a crash: no [DONE], no final chunk
                return response
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if i == 1 and self.gate is not None:
                await self.gate.wait()
            last = i == len(pieces) - 1
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = (
                    {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                )
            else:
                choice["text"] = piece
            await response.write(_event({**head, "choices": [choice]}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
