"""``GET /v1/models[/{model}]``, ``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiohttp import web
from inferno_inference import GenerationOutput, TokenLogprob, Usage
from pydantic import BaseModel, ValidationError

from inferno_backend.api.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
    error_body,
    from_validation_error,
)
from inferno_backend.api.formatting import (
    ChoiceState,
    chat_logprobs,
    completion_logprobs,
    echoed_logprobs,
    joined_logprobs,
    usage_body,
)
from inferno_backend.api.generation import Generation, PromptOutput, build_sampling, check_context
from inferno_backend.api.keys import ARRIVAL, CONFIG, METRICS, ORCHESTRATOR, REQUEST_ID
from inferno_backend.api.reasoning import (
    ReasoningStream,
    ThinkStart,
    count_reasoning_tokens,
    parser_on,
    split_reasoning,
    think_start,
)
from inferno_backend.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from inferno_backend.api.tools import ToolCallStream, ToolPlan, call_body, conversation
from inferno_backend.orchestrator import (
    ModelNotServedError,
    NotAdmittingError,
    OverloadedError,
    ServedModel,
)

__all__ = [
    "ChatPrompt",
    "admitted",
    "chat_prompt",
    "collect",
    "encode",
    "event_stream",
    "final_usage",
    "parse_body",
    "render_chat",
    "report_failure",
    "routes",
    "start_generation",
    "template_defaults",
    "thinks",
]

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
M = TypeVar("M", bound=BaseModel)

#: Text longer than this is tokenized on a worker thread to keep the loop responsive.
_THREAD_TOKENIZE_CHARS = 8192


async def parse_body(request: web.Request, schema: type[M]) -> M:
    """Read and validate the JSON body against ``schema`` (400 naming the field otherwise)."""
    raw = await request.read()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


@contextlib.asynccontextmanager
async def admitted(
    request: web.Request, model: str, *, generates: bool = True
) -> AsyncIterator[ServedModel]:
    """The served ``model`` while this request holds an admission (404 or 503 otherwise;
    ``generates`` as in `Orchestrator.admit`)."""
    try:
        async with request.app[ORCHESTRATOR].admit(model, generates=generates) as served:
            structlog.contextvars.bind_contextvars(model=served.name)
            yield served
    except ModelNotServedError as exc:
        raise NotFoundError(str(exc), param="model", code="model_not_found") from None
    except OverloadedError as exc:
        request.app[METRICS].rejected.labels(model, "overloaded").inc()
        raise ServiceUnavailableError(
            str(exc), code="server_overloaded", headers={"Retry-After": "1"}
        ) from None
    except NotAdmittingError as exc:
        raise ServiceUnavailableError(str(exc), headers={"Retry-After": "5"}) from None


async def encode(served: ServedModel, text: str, *, special: bool) -> list[int]:
    """``text`` tokenized by the served model's tokenizer (long texts on a worker thread)."""
    tokenizer = served.model.tokenizer
    if len(text) > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=special)
    return tokenizer.encode(text, add_special_tokens=special)


def render_chat(
    served: ServedModel,
    messages: Sequence[ChatMessage],
    plan: ToolPlan | None,
    add_generation_prompt: bool,
    *,
    continue_final: bool = False,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """The conversation as the model's chat template writes it, with the extra template
    ``variables`` (400 when it has no template, or when the template fails on these messages).

    With ``continue_final`` the text stops right after the last message's content, so the
    model goes on with that message (the template would close it).
    """
    template = served.model.chat_template
    if template is None:
        raise BadRequestError(
            f"the model {served.name!r} has no chat template; use /v1/completions",
            param="model",
        )
    turns = conversation(messages, plan)
    try:
        text = template.render(
            turns,
            add_generation_prompt=add_generation_prompt and not continue_final,
            **(variables or {}),
        )
    except Exception as exc:
        raise BadRequestError(
            f"messages: cannot apply the chat template: {exc}", param="messages"
        ) from None
    if not continue_final:
        return text
    # Templates write the content as given or trimmed: cut after its last occurrence.
    content = str(turns[-1]["content"])
    for form in (content, content.strip()):
        at = text.rfind(form) if form else -1
        if at >= 0:
            return text[: at + len(form)]
    raise BadRequestError(
        "continue_final_message: the chat template does not write the last message's text "
        "as given, so it cannot be continued",
        param="continue_final_message",
    )


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A conversation rendered for generation."""

    ids: list[int]
    #: New tokens the answer may have.
    budget: int
    #: Where the answer starts with respect to a think block (see `think_start`).
    start: ThinkStart


async def chat_prompt(
    served: ServedModel,
    messages: Sequence[ChatMessage],
    plan: ToolPlan | None,
    token_limit: int | None,
    param: str,
    *,
    continue_final: bool = False,
    variables: Mapping[str, Any] | None = None,
) -> ChatPrompt:
    """A conversation's prompt (with the template ``variables``) and its token budget:
    ``token_limit``, or the rest of the context capped by the model's recommended
    ``max_tokens`` (400 when it does not fit)."""
    text = render_chat(
        served,
        messages,
        plan,
        add_generation_prompt=True,
        continue_final=continue_final,
        variables=variables,
    )
    ids = await encode(served, text, special=False)
    start = think_start(text, messages[-1].text if continue_final else None)
    return ChatPrompt(ids, prompt_budget(served, len(ids), token_limit, param), start)


def template_defaults(request: web.Request) -> dict[str, Any]:
    """The daemon's chat template variables (``default_chat_template_kwargs``), which a
    request's own replace."""
    return dict(request.app[CONFIG].default_chat_template_kwargs)


def thinks(request: web.Request, served: ServedModel) -> bool:
    """Whether the daemon splits ``served``'s reasoning from its answers (``reasoning_parser``
    and the model's chat template)."""
    return parser_on(request.app[CONFIG].reasoning_parser, served.model.chat_template)


def prompt_budget(served: ServedModel, prompt_len: int, token_limit: int | None, param: str) -> int:
    """New tokens a prompt may have: ``token_limit``, or the rest of the context capped by
    the model's recommended ``max_tokens`` (400 when the prompt and limit do not fit)."""
    budget = check_context(prompt_len, token_limit, served.max_model_len, param)
    if token_limit is None and served.sampling_defaults.max_tokens is not None:
        budget = min(budget, served.sampling_defaults.max_tokens)
    return budget


def start_generation(request: web.Request, served: ServedModel, rid: str, **kw: Any) -> Generation:
    """A `Generation` of this request on ``served``, observed by the app's metrics and bus."""
    return Generation(
        served=served,
        request_id=rid,
        metrics=request.app[METRICS],
        bus=request.app[ORCHESTRATOR].bus,
        arrival=request[ARRIVAL],
        **kw,
    )


def start_chat(
    request: web.Request,
    served: ServedModel,
    rid: str,
    body: ChatCompletionRequest,
    ids: Sequence[int],
    budget: int,
    *,
    prompt_param: str = "messages",
    think: ThinkStart | None = None,
) -> Generation:
    """The `Generation` of a chat request's prompt ``ids``: its sampling fields (over the
    served model's defaults), logprobs and tool calls, at most ``budget`` new tokens;
    ``think`` as `build_sampling` takes it."""
    top = body.top_logprobs or 0
    sampling = build_sampling(
        body,
        max_tokens=budget,
        logprobs=top if body.logprobs else None,
        defaults=served.sampling_defaults,
        think=think,
    )
    return start_generation(
        request,
        served,
        rid,
        prompts=[ids],
        sampling=sampling,
        prompt_param=prompt_param,
        tool_plan=body.tool_plan,
        priority=body.priority,
    )


def _model_card(served: ServedModel) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "inferno",
        "max_model_len": served.max_model_len,
    }
    if served.lora is not None:
        # As vLLM names an adapter's base: what a client needs to tell the two apart.
        card.update(parent=served.model.name, lora=served.lora)
    return card


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """The served models."""
    served = request.app[ORCHESTRATOR].served.values()
    return web.json_response({"object": "list", "data": [_model_card(s) for s in served]})


@routes.get("/v1/models/{model}")
async def retrieve_model(request: web.Request) -> web.Response:
    """One served model (404 ``model_not_found`` otherwise), as ``client.models.retrieve``."""
    name = request.match_info["model"]
    served = request.app[ORCHESTRATOR].served.get(name)
    if served is None:
        raise NotFoundError(
            f"the model {name!r} does not exist", param="model", code="model_not_found"
        )
    return web.json_response(_model_card(served))


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """A chat completion, streamed as server-sent events when ``stream`` is true."""
    request[ARRIVAL] = time.perf_counter()
    body = await parse_body(request, ChatCompletionRequest)
    async with admitted(request, body.model) as served:
        plan = body.tool_plan
        thinking = thinks(request, served)
        prompt = await chat_prompt(
            served,
            body.messages,
            plan,
            body.token_limit,
            "messages",
            continue_final=body.continue_final_message,
            variables=template_defaults(request) | body.template_variables(),
        )
        start = prompt.start if thinking else None
        top = body.top_logprobs or 0
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        gen = start_chat(request, served, rid, body, prompt.ids, prompt.budget, think=start)
        head = {"id": rid, "created": int(time.time()), "model": served.name}
        tokenizer = served.model.tokenizer

        def lp(logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
            return chat_logprobs(tokenizer, logprobs, top) if body.logprobs else None

        if not body.stream:
            states = await collect(request, gen, body.n)
            choices = []
            reasoning_tokens = 0
            for i, s in enumerate(states):
                text = "".join(s.text)
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if start is not None:
                    split = split_reasoning(text, start)
                    text = split.content
                    message = {
                        "role": "assistant",
                        "content": text,
                        # Both names: vLLM's newer one and DeepSeek's, which clients still read.
                        "reasoning": split.reasoning,
                        "reasoning_content": split.reasoning,
                    }
                    reasoning_tokens += count_reasoning_tokens(s.text, s.piece_tokens, start)
                finish = s.finish_reason
                calls = plan.calls(text) if plan is not None and finish == "stop" else None
                if calls is not None:
                    bodies = [call_body(name, arguments) for name, arguments in calls]
                    message.update(content=None, tool_calls=bodies)
                    finish = "tool_calls"
                    request.app[METRICS].tool_calls.labels(served.name).inc(len(bodies))
                choices.append(
                    {
                        "index": i,
                        "message": message,
                        "logprobs": lp(s.logprobs),
                        "finish_reason": finish,
                        "stop_reason": None if finish == "tool_calls" else s.stop_reason,
                    }
                )
            return web.json_response(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": choices,
                    "usage": usage_body(
                        final_usage(gen, states), None if start is None else reasoning_tokens
                    ),
                }
            )

        streams = [ToolCallStream(plan) for _ in range(body.n)] if plan is not None else None
        splits = None if start is None else [ReasoningStream(start) for _ in range(body.n)]

        def chunk(item: PromptOutput) -> list[dict[str, Any]]:
            out = item.output
            text, reasoning = out.text, ""
            if splits is not None:
                split = splits[out.index]
                part = split.push(text, len(out.token_ids), last=out.finish_reason is not None)
                text, reasoning = part.content, part.reasoning
            if streams is not None:
                stream = streams[out.index]
                delta, finish = stream.push(text, out.finish_reason)
                if finish == "tool_calls":
                    request.app[METRICS].tool_calls.labels(served.name).inc(stream.calls)
            else:
                delta, finish = ({"content": text} if text else {}), out.finish_reason
            if reasoning:
                delta = {"reasoning": reasoning, "reasoning_content": reasoning, **delta}
            if not delta and not finish and not (body.logprobs and out.logprobs):
                return []
            return [
                {
                    "index": out.index,
                    "delta": delta,
                    "logprobs": lp(out.logprobs or ()),
                    "finish_reason": finish,
                    "stop_reason": out.stop_reason if finish == "stop" else None,
                }
            ]

        opening = [
            {
                "index": i,
                # Null, not "", when the answer may be calls: their message has no content.
                "delta": {"role": "assistant", "content": "" if plan is None else None},
                "logprobs": None,
                "finish_reason": None,
                "stop_reason": None,
            }
            for i in range(body.n)
        ]
        return await _sse(
            request,
            gen,
            {**head, "object": "chat.completion.chunk"},
            chunk,
            opening,
            body.include_usage,
            None if splits is None else lambda: sum(s.reasoning_tokens for s in splits),
        )


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """A text completion for one prompt or a batch, streamed when ``stream`` is true."""
    request[ARRIVAL] = time.perf_counter()
    body = await parse_body(request, CompletionRequest)
    scoring = body.echo and body.logprobs is not None  # the prompt's logprobs too
    if scoring and body.stream and body.n > 1:
        raise BadRequestError(
            "echo with logprobs streams one choice per prompt; use n=1 or stream=false",
            param="n",
        )
    async with admitted(request, body.model) as served:
        tokenizer = served.model.tokenizer
        prompts: list[list[int]] = []
        texts: list[str] = []
        for p in body.prompts:
            ids = await encode(served, p, special=True) if isinstance(p, str) else list(p)
            prompts.append(ids)
            texts.append(p if isinstance(p, str) else (tokenizer.decode(p) if body.echo else ""))
        budgets = [
            check_context(len(ids), body.max_tokens, served.max_model_len, "prompt")
            for ids in prompts
        ]
        # One budget for the batch: what was asked, which fits every prompt, or the default
        # (the model's, else OpenAI's 16) as far as every prompt has room.
        default_budget = served.sampling_defaults.max_tokens or 16
        max_tokens = body.max_tokens or min(default_budget, *budgets)
        top = body.logprobs or 0
        sampling = build_sampling(
            body,
            max_tokens=max_tokens,
            logprobs=body.logprobs,
            defaults=served.sampling_defaults,
            prompt_logprobs=body.logprobs if scoring else None,
        )
        rid = f"cmpl-{uuid.uuid4().hex}"
        gen = start_generation(
            request, served, rid, prompts=prompts, sampling=sampling, priority=body.priority
        )
        head = {"id": rid, "created": int(time.time()), "model": served.name}
        n = body.n

        if not body.stream:
            states = await collect(request, gen, n * len(prompts))
            choices = []
            for i, s in enumerate(states):
                prefix = texts[i // n] if body.echo else ""
                logprobs = None
                if body.logprobs is not None:
                    logprobs = completion_logprobs(tokenizer, s.logprobs, top, len(prefix))
                scored = states[i // n * n].prompt_logprobs
                if logprobs is not None and scoring and scored is not None:
                    prompt_part = echoed_logprobs(tokenizer, prompts[i // n], scored, top)
                    logprobs = joined_logprobs(prompt_part, logprobs)
                choices.append(
                    {
                        "index": i,
                        "text": prefix + "".join(s.text),
                        "logprobs": logprobs,
                        "finish_reason": s.finish_reason,
                        "stop_reason": s.stop_reason,
                    }
                )
            return web.json_response(
                {
                    **head,
                    "object": "text_completion",
                    "choices": choices,
                    "usage": usage_body(final_usage(gen, states)),
                }
            )

        echoed: set[int] = set()
        offsets = [0] * (n * len(prompts))

        def chunk(item: PromptOutput) -> list[dict[str, Any]]:
            out = item.output
            index = item.prompt_index * n + out.index
            text = out.text
            if body.echo and index not in echoed:
                echoed.add(index)
                text = texts[item.prompt_index] + text
            if not text and not out.finish_reason:
                return []
            logprobs = None
            if body.logprobs is not None:
                scored = out.prompt_logprobs if scoring else None
                # With the prompt scored, the generated tokens follow the echoed prompt's text.
                at = offsets[index] + (len(texts[item.prompt_index]) if scored else 0)
                logprobs = completion_logprobs(tokenizer, out.logprobs or (), top, at)
                if scored is not None:
                    prompt_part = echoed_logprobs(
                        tokenizer, prompts[item.prompt_index], scored, top
                    )
                    logprobs = joined_logprobs(prompt_part, logprobs)
            offsets[index] += len(text)
            return [
                {
                    "index": index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": out.finish_reason,
                    "stop_reason": out.stop_reason,
                }
            ]

        return await _sse(
            request, gen, {**head, "object": "text_completion"}, chunk, [], body.include_usage
        )


async def collect(request: web.Request, gen: Generation, choices: int) -> list[ChoiceState]:
    """Run a non-streamed request to the end; 500 if the engine failed it."""
    states = [ChoiceState() for _ in range(choices)]
    n = gen.sampling.n
    async with contextlib.aclosing(gen.stream()) as stream:
        async for item in stream:
            out = item.output
            state = states[item.prompt_index * n + out.index]
            state.text.append(out.text)
            state.piece_tokens.append(len(out.token_ids))
            state.token_ids.extend(out.token_ids)
            if out.logprobs:
                state.logprobs.extend(out.logprobs)
            if out.finish_reason is not None:
                state.finish_reason = out.finish_reason
                state.stop_reason = out.stop_reason
            if out.prompt_logprobs is not None:
                state.prompt_logprobs = out.prompt_logprobs
                state.error = out.error
    failed = next((s for s in states if s.finish_reason == "error"), None)
    if failed is not None:
        message = failed.error or "the engine failed"
        request.app[ORCHESTRATOR].report_engine_failure(gen.served.name, message, gen.request_id)
        raise APIError(f"generation failed: {message}", code="engine_error")
    return states


def final_usage(gen: Generation, states: list[ChoiceState]) -> Usage:
    """The engine's usage of a finished generation, or one counted from its choices."""
    if gen.usage is not None:
        return gen.usage
    return Usage(sum(len(p) for p in gen.prompts), sum(len(s.token_ids) for s in states))


def event_stream(request: web.Request) -> web.StreamResponse:
    """An unprepared server-sent-events response carrying the request's id."""
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": request.get(REQUEST_ID, ""),
        }
    )


def report_failure(request: web.Request, gen: Generation, output: GenerationOutput) -> str:
    """Tell the orchestrator that the engine failed ``output``'s request (it may mark the
    model unhealthy); returns the message for the client."""
    message = output.error or "the engine failed"
    request.app[ORCHESTRATOR].report_engine_failure(gen.served.name, message, gen.request_id)
    return f"generation failed: {message}"


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _sse(
    request: web.Request,
    gen: Generation,
    head: dict[str, Any],
    chunk: Callable[[PromptOutput], list[dict[str, Any]]],
    opening: list[dict[str, Any]],
    include_usage: bool,
    reasoning_tokens: Callable[[], int] | None = None,
) -> web.StreamResponse:
    """Stream ``gen`` as server-sent events ending with ``data: [DONE]`` (the usage chunk
    counts ``reasoning_tokens()`` when given).

    The first output is awaited before the response starts, so an invalid request still gets a
    JSON error with its 4xx status. A client that disconnects ends the loop; closing the stream
    then aborts the engine requests.
    """
    extra = {"usage": None} if include_usage else {}
    response = event_stream(request)
    async with contextlib.aclosing(gen.stream()) as stream:
        first = await anext(stream, None)
        await response.prepare(request)
        try:
            if opening:
                await response.write(_event({**head, "choices": opening, **extra}))
            pending = [first] if first is not None else []
            while True:
                item = pending.pop() if pending else await anext(stream, None)
                if item is None:
                    break
                if item.output.finish_reason == "error":
                    message = report_failure(request, gen, item.output)
                    body = error_body(message, "server_error", code="engine_error")
                    await response.write(_event(body))
                    continue
                choices = chunk(item)
                if choices:
                    await response.write(_event({**head, "choices": choices, **extra}))
            if include_usage and gen.usage is not None:
                reasoned = None if reasoning_tokens is None else reasoning_tokens()
                usage = usage_body(gen.usage, reasoned)
                await response.write(_event({**head, "choices": [], "usage": usage}))
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, ConnectionError):
            log.info("client disconnected mid-stream; aborting", engine_request=gen.request_id)
        except APIError as exc:
            await response.write(_event(error_body(exc.message, exc.type, code=exc.code)))
    return response
