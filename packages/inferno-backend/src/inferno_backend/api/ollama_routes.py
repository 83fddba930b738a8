"""Ollama's API on the same engine: ``/api/chat``, ``/api/generate``, ``/api/embed`` (and the
older ``/api/embeddings``), ``/api/tags``, ``/api/show``, ``/api/ps`` and ``/api/version``, so
tools written for Ollama (its Python client, editors, chat front ends) work against the daemon
unchanged.

Requests are translated into the OpenAI routes' (`inferno_backend.api.ollama_schemas`) and run
through the same prompt rendering, sampling defaults, admission, metrics and abort-on-disconnect.
Streams are JSON lines (``application/x-ndjson``, streaming is Ollama's default), the last with
``done: true``, the reason and the token counts and durations in nanoseconds. Errors keep the
daemon's OpenAI error body; Ollama's clients read its ``error`` field either way. Models are
those the daemon serves: there is no pull, push, create, copy or delete.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web
from inferno_inference import TokenLogprob, Usage
from pydantic import ValidationError

from inferno_backend.api.embedding_routes import embed_inputs, vector
from inferno_backend.api.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    from_validation_error,
)
from inferno_backend.api.formatting import chat_logprobs
from inferno_backend.api.generation import Generation
from inferno_backend.api.keys import ARRIVAL, CONFIG, ORCHESTRATOR, REQUEST_ID
from inferno_backend.api.ollama_schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
)
from inferno_backend.api.openai_routes import (
    admitted,
    chat_prompt,
    collect,
    encode,
    parse_body,
    prompt_budget,
    render_chat,
    report_failure,
    start_chat,
    template_defaults,
    thinks,
)
from inferno_backend.api.reasoning import (
    ReasoningStream,
    ThinkStart,
    split_reasoning,
    think_start,
)
from inferno_backend.api.schemas import ChatCompletionRequest
from inferno_backend.api.tools import ToolPlan
from inferno_backend.config import ServeConfig
from inferno_backend.orchestrator import ServedModel

__all__ = ["routes"]

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

_NS = 1_000_000_000


def _now() -> str:
    """The current time as Ollama writes ``created_at`` (RFC 3339, UTC)."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _as_chat(body: OllamaChatRequest | OllamaGenerateRequest) -> ChatCompletionRequest:
    """The OpenAI chat request of ``body`` (400 for what the chat route refuses)."""
    try:
        return body.as_chat()
    except ValidationError as exc:
        raise from_validation_error(exc) from None


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """A chat turn; JSON lines unless ``stream`` is false."""
    request[ARRIVAL] = time.perf_counter()
    body = await parse_body(request, OllamaChatRequest)
    chat_body = _as_chat(body) if body.messages else None
    async with admitted(request, body.model) as served:
        if chat_body is None:
            return web.json_response(_loaded(served, {"message": _message("")}))
        plan = chat_body.tool_plan
        thinking = _thinking(request, served, body)
        prompt = await chat_prompt(
            served,
            chat_body.messages,
            plan,
            chat_body.token_limit,
            "messages",
            continue_final=chat_body.continue_final_message,
            variables=template_defaults(request) | chat_body.template_variables(),
        )
        start = prompt.start if _splits(body, thinking) else None
        gen = start_chat(
            request, served, _request_id(), chat_body, prompt.ids, prompt.budget, think=start
        )
        return await _answer(request, gen, body, _ChatShape(plan), start)


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    """A completion of ``prompt`` (through the chat template unless ``raw``)."""
    request[ARRIVAL] = time.perf_counter()
    body = await parse_body(request, OllamaGenerateRequest)
    chat_body = _as_chat(body) if body.prompt else None
    async with admitted(request, body.model) as served:
        if chat_body is None:
            return web.json_response(_loaded(served, {"response": ""}))
        thinking = _thinking(request, served, body)
        context = list(body.context or ())
        if body.raw:
            # Special tokens (BOS) only where the text starts the sequence.
            text = body.prompt
            ids = context + await encode(served, text, special=not context)
        else:
            text = render_chat(
                served,
                chat_body.messages,
                None,
                add_generation_prompt=True,
                variables=template_defaults(request) | chat_body.template_variables(),
            )
            ids = context + await encode(served, text, special=False)
        start = think_start(text) if _splits(body, thinking) else None
        budget = prompt_budget(served, len(ids), chat_body.token_limit, "prompt")
        gen = start_chat(
            request,
            served,
            _request_id(),
            chat_body,
            ids,
            budget,
            prompt_param="prompt",
            think=start,
        )
        return await _answer(request, gen, body, _GenerateShape(ids), start)


def _thinking(
    request: web.Request, served: ServedModel, body: OllamaChatRequest | OllamaGenerateRequest
) -> bool:
    """Whether ``served`` thinks (its reasoning is split); a 400 when ``think`` asks for
    thinking from a model that does not, as Ollama answers."""
    thinking = thinks(request, served)
    if body.wants_thinking and not thinking:
        raise BadRequestError(f"{body.model!r} does not support thinking", param="think")
    return thinking


def _splits(body: OllamaChatRequest | OllamaGenerateRequest, thinking: bool) -> bool:
    """Whether the answer's thinking goes apart: for a model that thinks, unless ``think`` is
    false (then, as in Ollama, the text stays as generated)."""
    return thinking and body.think is not False


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    """Unit-length embeddings of one text or a batch."""
    arrival = time.perf_counter()
    body = await parse_body(request, OllamaEmbedRequest)
    async with admitted(request, body.model) as served:
        outputs = await embed_inputs(
            request,
            served,
            body.texts,
            batch=not isinstance(body.input, str),
            dimensions=body.dimensions,
            arrival=arrival,
            truncate=body.truncate,
        )
    return web.json_response(
        {
            "model": served.name,
            "embeddings": [vector(o.embedding, body.dimensions) for o in outputs],
            "total_duration": int((time.perf_counter() - arrival) * _NS),
            "load_duration": 0,
            "prompt_eval_count": sum(o.prompt_tokens for o in outputs),
        }
    )


@routes.post("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """The older route: one prompt's embedding (unit length, as ``/api/embed``'s)."""
    arrival = time.perf_counter()
    body = await parse_body(request, OllamaEmbeddingsRequest)
    async with admitted(request, body.model) as served:
        (out,) = await embed_inputs(
            request, served, [body.prompt], batch=False, dimensions=None, arrival=arrival
        )
    return web.json_response({"embedding": list(out.embedding)})


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    """The served models, as Ollama lists its local ones."""
    served = request.app[ORCHESTRATOR].served.values()
    config = request.app[CONFIG]
    return web.json_response({"models": [_model_entry(s, config) for s in served]})


@routes.get("/api/ps")
async def running(request: web.Request) -> web.Response:
    """The loaded models: all the served ones, loaded until unloaded (no expiry)."""
    entries = []
    config = request.app[CONFIG]
    for s in request.app[ORCHESTRATOR].served.values():
        entry = _model_entry(s, config)
        entries.append({**entry, "expires_at": None, "context_length": s.max_model_len})
    return web.json_response({"models": entries})


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    """One served model's details, shape and chat template (404 for another name)."""
    body = await parse_body(request, OllamaShowRequest)
    name = body.model_name
    served = request.app[ORCHESTRATOR].served.get(name)
    if served is None:
        raise NotFoundError(f"model {name!r} not found", param="model", code="model_not_found")
    config = served.model.config
    arch = config.architecture
    template = served.model.chat_template
    capabilities = ["completion", "embedding"] + (["tools"] if template is not None else [])
    if thinks(request, served):
        capabilities.append("thinking")
    return web.json_response(
        {
            "details": _details(served, request.app[CONFIG]),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": _parameter_count(served),
                f"{arch}.context_length": served.max_model_len,
                f"{arch}.embedding_length": config.hidden_size,
                f"{arch}.block_count": config.num_hidden_layers,
                f"{arch}.attention.head_count": config.num_attention_heads,
                f"{arch}.attention.head_count_kv": config.num_key_value_heads,
                f"{arch}.feed_forward_length": config.intermediate_size,
                f"{arch}.vocab_size": config.vocab_size,
            },
            "template": getattr(template, "source", "") if template is not None else "",
            "parameters": "",
            "modified_at": _created(served),
            "capabilities": capabilities,
        }
    )


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    """The daemon's version (Ollama clients call this to find a server)."""
    return web.json_response({"version": importlib.metadata.version("inferno-backend")})


# -- answers ------------------------------------------------------------------------------------


class _ChatShape:
    """How ``/api/chat`` writes text: in ``message``, with tool calls at the end."""

    def __init__(self, plan: ToolPlan | None) -> None:
        self.plan = plan

    def piece(self, text: str, thinking: str | None = None) -> dict[str, Any]:
        return {"message": _message(text, thinking)}

    def final(
        self,
        text: str,
        finish: str | None,
        generated: Sequence[int],
        thinking: str | None = None,
    ) -> dict[str, Any]:
        """The whole answer in one body; its tool calls when it is calls."""
        calls = self.plan.calls(text) if self.plan is not None and finish == "stop" else None
        if calls is None:
            return {"message": _message(text, thinking)}
        return {
            "message": {
                **_message("", thinking),
                "tool_calls": [
                    {"function": {"name": name, "arguments": json.loads(arguments)}}
                    for name, arguments in calls
                ],
            }
        }

    def closing(self, generated: Sequence[int]) -> dict[str, Any]:
        return {"message": _message("")}


class _GenerateShape:
    """How ``/api/generate`` writes text: in ``response``, with ``context`` at the end."""

    plan = None

    def __init__(self, prompt: Sequence[int]) -> None:
        self.prompt = list(prompt)

    def piece(self, text: str, thinking: str | None = None) -> dict[str, Any]:
        return {"response": text, **({"thinking": thinking} if thinking else {})}

    def final(
        self,
        text: str,
        finish: str | None,
        generated: Sequence[int],
        thinking: str | None = None,
    ) -> dict[str, Any]:
        return {**self.piece(text, thinking), "context": [*self.prompt, *generated]}

    def closing(self, generated: Sequence[int]) -> dict[str, Any]:
        return {"response": "", "context": [*self.prompt, *generated]}


_Shape = _ChatShape | _GenerateShape


def _request_id() -> str:
    return f"ollama-{uuid.uuid4().hex}"


def _message(text: str, thinking: str | None = None) -> dict[str, Any]:
    """An assistant message; ``thinking`` only when there is some (as Ollama leaves it out)."""
    message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    return message


def _loaded(served: ServedModel, empty: dict[str, Any]) -> dict[str, Any]:
    """The answer to a request without input: the model is loaded (it is, while served)."""
    return {
        "model": served.name,
        "created_at": _now(),
        **empty,
        "done": True,
        "done_reason": "load",
    }


def _done(gen: Generation, arrival: float, finish: str | None, generated: int) -> dict[str, Any]:
    """The closing fields: why it ended, token counts and durations (nanoseconds)."""
    end = time.perf_counter()
    first = gen.first_token_at if gen.first_token_at is not None else end
    usage = gen.usage or Usage(len(gen.prompts[0]), generated)
    return {
        "done": True,
        "done_reason": finish or "stop",
        "total_duration": int((end - arrival) * _NS),
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int((first - arrival) * _NS),
        "eval_count": usage.completion_tokens,
        "eval_duration": int((end - first) * _NS),
    }


async def _answer(
    request: web.Request,
    gen: Generation,
    body: OllamaChatRequest | OllamaGenerateRequest,
    shape: _Shape,
    start: ThinkStart | None = None,
) -> web.StreamResponse:
    """Run ``gen`` to one JSON body, or stream it as JSON lines; with ``start``, the thinking
    apart from the answer (streamed first, even when tools hold the answer to its end)."""
    tokenizer = gen.served.model.tokenizer
    top = body.top_logprobs or 0
    arrival = request[ARRIVAL]

    def lp(items: Sequence[TokenLogprob]) -> dict[str, Any]:
        if not body.logprobs:
            return {}
        return {"logprobs": chat_logprobs(tokenizer, items, top)["content"]}

    def head() -> dict[str, Any]:
        return {"model": gen.served.name, "created_at": _now()}

    if not body.stream:
        (state,) = await collect(request, gen, 1)
        answer = split_reasoning("".join(state.text), start or "closed")
        return web.json_response(
            {
                **head(),
                **shape.final(
                    answer.content, state.finish_reason, state.token_ids, answer.reasoning
                ),
                **lp(state.logprobs),
                **_done(gen, arrival, state.finish_reason, len(state.token_ids)),
            }
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Request-Id": request.get(REQUEST_ID, ""),
        }
    )

    async def write(line: dict[str, Any]) -> None:
        await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    split = None if start is None else ReasoningStream(start)
    async with contextlib.aclosing(gen.stream()) as stream:
        first = await anext(stream, None)  # an invalid request still gets its 4xx
        await response.prepare(request)
        try:
            held: list[str] = []  # with tools: the answer, which may be calls, to the end
            tokens: list[TokenLogprob] = []
            generated: list[int] = []
            finish: str | None = None
            pending = [first] if first is not None else []
            while True:
                item = pending.pop() if pending else await anext(stream, None)
                if item is None:
                    break
                out = item.output
                if out.finish_reason == "error":
                    await write({"error": report_failure(request, gen, out)})
                    return response
                generated.extend(out.token_ids)
                finish = out.finish_reason or finish
                text, thought = out.text, ""
                if split is not None:
                    last = out.finish_reason is not None
                    part = split.push(text, len(out.token_ids), last=last)
                    text, thought = part.content, part.reasoning
                if shape.plan is not None:
                    held.append(text)
                    tokens.extend(out.logprobs or ())
                    if thought:
                        await write({**head(), **shape.piece("", thought), "done": False})
                elif text or thought or (body.logprobs and out.logprobs):
                    piece = shape.piece(text, thought)
                    await write({**head(), **piece, **lp(out.logprobs or ()), "done": False})
            if shape.plan is not None:
                whole = shape.final("".join(held), finish, generated)
                await write({**head(), **whole, **lp(tokens), "done": False})
            await write(
                {
                    **head(),
                    **shape.closing(generated),
                    **_done(gen, arrival, finish, len(generated)),
                }
            )
        except (ConnectionResetError, ConnectionError):
            log.info("client disconnected mid-stream; aborting", engine_request=gen.request_id)
        except APIError as exc:
            await write({"error": exc.message})
    return response


# -- model listings ------------------------------------------------------------------------------


def _created(served: ServedModel) -> str:
    when = datetime.datetime.fromtimestamp(served.created, datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def _parameter_count(served: ServedModel) -> int:
    """Parameters of the model's shape (embeddings, blocks, final norm, an untied head)."""
    return served.model.config.num_parameters()


def _size_label(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}".rstrip("0").rstrip(".") + unit
    return str(count)


def _details(served: ServedModel, config: ServeConfig) -> dict[str, Any]:
    arch = served.model.config.architecture
    return {
        "parent_model": "",
        "format": "inferno",
        "family": arch,
        "families": [arch],
        "parameter_size": _size_label(_parameter_count(served)),
        # What the weights compute in here (a GGUF's own quantization is unpacked on load).
        "quantization_level": "INT8"
        if config.weight_quantization == "int8"
        else {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[config.dtype],
    }


def _model_entry(served: ServedModel, config: ServeConfig) -> dict[str, Any]:
    return {
        "name": served.name,
        "model": served.name,
        "modified_at": _created(served),
        "size": served.model.nbytes(),
        "digest": "",
        "details": _details(served, config),
    }
