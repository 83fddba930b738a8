"""``POST /v1/responses``: OpenAI's Responses API for text and function calls.

The input (a string or messages, with ``instructions`` as a system message) goes through the
model's chat template, as a chat completion's messages do (function calls and their outputs
as assistant calls and tool messages; the tools described as for chat). The answer comes back
as one assistant message with one ``output_text`` part, or as ``function_call`` items, or as
the Responses API's typed stream of server-sent events (``response.created`` ...
``response.output_text.delta`` ... ``response.completed``).

Finished responses are kept (`inferno_backend.api.response_store`, unless ``store`` is false):
``previous_response_id`` continues one's conversation, ``GET``/``DELETE /v1/responses/{id}``
read and forget one.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from inferno_inference import TokenLogprob, Usage
from pydantic import BaseModel

from inferno_backend.api.errors import APIError, NotFoundError, error_body
from inferno_backend.api.formatting import chat_logprobs
from inferno_backend.api.generation import Generation, build_sampling
from inferno_backend.api.keys import ARRIVAL, METRICS, RESPONSES
from inferno_backend.api.openai_routes import (
    admitted,
    chat_prompt,
    collect,
    event_stream,
    final_usage,
    parse_body,
    report_failure,
    start_generation,
    template_defaults,
    thinks,
)
from inferno_backend.api.reasoning import (
    ReasoningStream,
    ThinkStart,
    count_reasoning_tokens,
    split_reasoning,
)
from inferno_backend.api.response_store import ResponseStore
from inferno_backend.api.schemas import ChatMessage, ResponsesRequest, ToolCall, ToolCallFunction
from inferno_backend.api.tools import ToolPlan, call_id

__all__ = ["routes"]

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def _usage(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def _reasoning(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """A ``reasoning`` output item (OpenAI's shape: the text in ``content``, no summary)."""
    content = [] if text is None else [_reasoning_part(text)]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def _part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _message(
    item_id: str, text: str | None, status: str, logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    content = [] if text is None else [_part(text, logprobs)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


class _Response:
    """The response object as it stands, for the final body and the stream's events."""

    def __init__(
        self,
        body: ResponsesRequest,
        model: str,
        *,
        keep: ResponseStore | None = None,
        turn: Sequence[ChatMessage] = (),
    ) -> None:
        # Where the finished response is kept (None: not kept), and the conversation it
        # answers (without instructions), which a continuation starts from.
        self.keep = keep if keep is not None and keep.capacity > 0 else None
        self.turn = list(turn)
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.reasoning_id = f"rs_{uuid.uuid4().hex}"
        fmt = body.text.format if body.text is not None else None
        self.head: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,  # as asked: null is the context
            "metadata": body.metadata or {},
            "temperature": body.temperature,
            "top_p": body.top_p,
            "text": {
                "format": {"type": "text"}
                if fmt is None
                else fmt.model_dump(by_alias=True, exclude_none=True)
            },
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
            "tool_choice": body.tool_choice.model_dump()
            if isinstance(body.tool_choice, BaseModel)
            else (body.tool_choice or "auto"),
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "store": self.keep is not None,
            "truncation": "disabled",
            "user": body.user,
            "error": None,
        }

    def output(
        self,
        text: str,
        finish: str | None,
        plan: ToolPlan | None,
        logprobs: list[dict[str, Any]] | None = None,
        reasoning: str | None = None,
    ) -> list[dict[str, Any]]:
        """The output items of a finished answer: its reasoning (when there is some), then
        its function calls or one message."""
        calls = plan.calls(text) if plan is not None and finish == "stop" else None
        thought = (
            [] if reasoning is None else [_reasoning(self.reasoning_id, reasoning, "completed")]
        )
        if calls is None:
            return [*thought, _message(self.item_id, text, _status(finish), logprobs)]
        return thought + [
            {
                "id": f"fc_{uuid.uuid4().hex}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id(),
                "name": name,
                "arguments": arguments,
            }
            for name, arguments in calls
        ]

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        finish: str | None,
        usage: Usage | None,
        reasoning_tokens: int = 0,
    ) -> dict[str, Any]:
        """The whole response: ``status`` in_progress, completed or incomplete."""
        return {
            **self.head,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
            "output": output,
            "usage": None if usage is None else _usage(usage, reasoning_tokens),
        }

    def final(
        self,
        status: str,
        output: list[dict[str, Any]],
        finish: str | None,
        usage: Usage | None,
        reasoning_tokens: int = 0,
    ) -> dict[str, Any]:
        """The finished response's body, kept for continuations when it is kept."""
        body = self.body(status, output, finish, usage, reasoning_tokens)
        if self.keep is not None:
            self.keep.put(body, [*self.turn, *_output_messages(output)])
        return body


def _output_messages(output: list[dict[str, Any]]) -> list[ChatMessage]:
    """A response's output items as the assistant messages a continuation sees (its
    reasoning as their ``reasoning_content``)."""
    thought = [
        part["text"] for item in output if item["type"] == "reasoning" for part in item["content"]
    ]
    reasoning = "".join(thought) if thought else None
    calls = [
        ToolCall(
            id=item["call_id"],
            type="function",
            function=ToolCallFunction(name=item["name"], arguments=item["arguments"]),
        )
        for item in output
        if item["type"] == "function_call"
    ]
    if calls:
        return [ChatMessage(role="assistant", tool_calls=calls, reasoning_content=reasoning)]
    text = "".join(
        part["text"] for item in output if item["type"] == "message" for part in item["content"]
    )
    return [ChatMessage(role="assistant", content=text, reasoning_content=reasoning)]


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    """A response to ``input``, streamed as typed server-sent events when ``stream`` is true."""
    request[ARRIVAL] = time.perf_counter()
    body = await parse_body(request, ResponsesRequest)
    kept = request.app[RESPONSES]
    turn = [*_history(kept, body.previous_response_id), *body.input_messages()]
    messages = body.prompt_messages(turn)
    async with admitted(request, body.model) as served:
        plan = body.tool_plan
        thinking = thinks(request, served)
        prompt = await chat_prompt(
            served,
            messages,
            plan,
            body.token_limit,
            "input",
            variables=template_defaults(request) | body.template_variables(),
        )
        start = prompt.start if thinking else None
        top = body.top_logprobs or 0
        sampling = build_sampling(
            body,
            max_tokens=prompt.budget,
            logprobs=top if body.wants_logprobs else None,
            defaults=served.sampling_defaults,
            think=start,
        )
        keep = None if body.store is False else kept
        response = _Response(body, served.name, keep=keep, turn=turn)
        tokenizer = served.model.tokenizer

        def lp(logprobs: Sequence[TokenLogprob]) -> list[dict[str, Any]] | None:
            if not body.wants_logprobs:
                return None
            return list(chat_logprobs(tokenizer, logprobs, top)["content"])

        gen = start_generation(
            request,
            served,
            response.id,
            prompts=[prompt.ids],
            sampling=sampling,
            prompt_param="input",
            tool_plan=plan,
            priority=body.priority,
        )
        if not body.stream:
            (state,) = await collect(request, gen, 1)
            answer, finish = "".join(state.text), state.finish_reason
            split = split_reasoning(answer, start or "closed")
            reasoned = 0
            if start is not None:
                reasoned = count_reasoning_tokens(state.text, state.piece_tokens, start)
            # The message's logprobs are its own tokens', after the reasoning's.
            logprobs = lp(state.logprobs[reasoned:])
            output = response.output(split.content, finish, plan, logprobs, split.reasoning)
            _count_calls(request, served.name, output)
            usage = final_usage(gen, [state])
            return web.json_response(
                response.final(_status(finish), output, finish, usage, reasoned)
            )
        return await _stream(request, gen, response, plan, lp, start)


def _history(kept: ResponseStore, previous: str | None) -> tuple[ChatMessage, ...]:
    """The conversation a continuation starts from (404 when the response is not kept)."""
    if previous is None:
        return ()
    stored = kept.get(previous)
    if stored is None:
        raise NotFoundError(
            f"previous response {previous!r} not found: this server keeps the last "
            f"{kept.capacity} responses, in memory",
            param="previous_response_id",
            code="response_not_found",
        )
    return stored.conversation


@routes.get("/v1/responses/{response_id}")
async def retrieve(request: web.Request) -> web.Response:
    """A kept response, as it was sent (404 ``response_not_found`` otherwise)."""
    rid = request.match_info["response_id"]
    stored = request.app[RESPONSES].get(rid)
    if stored is None:
        raise NotFoundError(f"response {rid!r} not found", code="response_not_found")
    return web.json_response(stored.body)


@routes.delete("/v1/responses/{response_id}")
async def delete(request: web.Request) -> web.Response:
    """Forget a kept response (404 ``response_not_found`` when it is not kept)."""
    rid = request.match_info["response_id"]
    if not request.app[RESPONSES].delete(rid):
        raise NotFoundError(f"response {rid!r} not found", code="response_not_found")
    return web.json_response({"id": rid, "object": "response", "deleted": True})


async def _stream(
    request: web.Request,
    gen: Generation,
    response: _Response,
    plan: ToolPlan | None,
    lp: Callable[[Sequence[TokenLogprob]], list[dict[str, Any]] | None],
    start: ThinkStart | None = None,
) -> web.StreamResponse:
    """The Responses API's event stream of one generation.

    As for chat streams, the first output is awaited before the response starts (an invalid
    request still gets a JSON 4xx), and a client that disconnects aborts the generation.
    With ``start`` (the reasoning is split), reasoning streams first as a ``reasoning`` item
    (``response.reasoning_text.delta``), closed when the answer begins. Text streams as it
    comes. With tools, an answer that may still be calls is held: to its end, then sent as
    the function calls it makes or as one message; under "auto", only until its first
    non-blank character shows it is text.
    """
    sse = event_stream(request)
    sequence = 0

    async def send(kind: str, **fields: Any) -> None:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        await sse.write(f"event: {kind}\ndata: {data}\n\n".encode())

    split = None if start is None else ReasoningStream(start)
    thought: list[str] = []  # the reasoning sent so far
    thinking = False  # the reasoning item is open
    # The answer's items come after the reasoning item, when there is one.
    where = {"item_id": response.item_id, "output_index": 0, "content_index": 0}
    at_reasoning = {"item_id": response.reasoning_id, "output_index": 0, "content_index": 0}

    async def open_message() -> None:
        where["output_index"] = 1 if thought else 0
        item = _message(response.item_id, None, "in_progress")
        await send("response.output_item.added", output_index=where["output_index"], item=item)
        await send("response.content_part.added", **where, part=_part(""))

    async def reason(delta: str) -> None:
        nonlocal thinking
        if not thinking:
            thinking = True
            item = _reasoning(response.reasoning_id, None, "in_progress")
            await send("response.output_item.added", output_index=0, item=item)
            part = _reasoning_part("")
            await send("response.content_part.added", **at_reasoning, part=part)
        thought.append(delta)
        await send("response.reasoning_text.delta", **at_reasoning, delta=delta)

    async def end_reasoning() -> None:
        nonlocal thinking
        if not thinking:
            return
        thinking = False
        text = "".join(thought)
        await send("response.reasoning_text.done", **at_reasoning, text=text)
        await send("response.content_part.done", **at_reasoning, part=_reasoning_part(text))
        item = _reasoning(response.reasoning_id, text, "completed")
        await send("response.output_item.done", output_index=0, item=item)

    async with contextlib.aclosing(gen.stream()) as stream:
        first = await anext(stream, None)
        await sse.prepare(request)
        try:
            started = response.body("in_progress", [], None, None)
            await send("response.created", response=started)
            await send("response.in_progress", response=started)
            # Text streams live; with tools it is held until it cannot be calls: under
            # "auto", from its first non-blank character if that does not open the array.
            # Where reasoning may come first, the message opens with the answer's first text.
            live = plan is None
            opened = False
            if live and split is None:
                await open_message()
                opened = True
            pieces: list[str] = []
            tokens: list[TokenLogprob] = []  # of every token, the reasoning's first
            unsent = 0  # answer tokens held back with the text (it may turn out calls)
            finish: str | None = None
            generated = 0
            pending = [first] if first is not None else []
            while True:
                out = pending.pop() if pending else await anext(stream, None)
                if out is None:
                    break
                if out.output.finish_reason == "error":
                    await _error(send, report_failure(request, gen, out.output), "engine_error")
                    return sse
                delta = out.output.text
                generated += len(out.output.token_ids)
                tokens.extend(out.output.logprobs or ())
                finish = out.output.finish_reason or finish
                if split is not None:
                    last = out.output.finish_reason is not None
                    part = split.push(delta, len(out.output.token_ids), last=last)
                    if part.reasoning:
                        await reason(part.reasoning)
                    delta = part.content
                    if delta:
                        await end_reasoning()
                skip = 0 if split is None else split.reasoning_tokens
                if delta:
                    pieces.append(delta)
                    if not live and plan is not None and _plainly_text(plan, pieces):
                        live = True
                        delta = "".join(pieces)
                    if live:
                        if not opened:
                            await open_message()
                            opened = True
                        answer_tokens = tokens[skip:]
                        fresh = answer_tokens[unsent:]
                        unsent = len(answer_tokens)
                        await send(
                            "response.output_text.delta",
                            **where,
                            delta=delta,
                            logprobs=lp(fresh) or [],
                        )
            await end_reasoning()
            reasoned = 0 if split is None else split.reasoning_tokens
            text = "".join(pieces)
            every = lp(tokens[reasoned:])
            output = response.output(text, finish, plan, every, "".join(thought) or None)
            answer = output[1:] if thought else output
            if answer[0]["type"] == "message":
                if not opened:  # held to the end: not a call after all, or no text yet
                    await open_message()
                    if text:
                        await send(
                            "response.output_text.delta", **where, delta=text, logprobs=every or []
                        )
                await send("response.output_text.done", **where, text=text, logprobs=every or [])
                await send("response.content_part.done", **where, part=_part(text, every))
                await send(
                    "response.output_item.done", output_index=where["output_index"], item=answer[0]
                )
            else:
                _count_calls(request, gen.served.name, output)
                for index, call in enumerate(answer, start=len(output) - len(answer)):
                    opened_call = {**call, "status": "in_progress", "arguments": ""}
                    await send("response.output_item.added", output_index=index, item=opened_call)
                    at = {"item_id": call["id"], "output_index": index}
                    await send(
                        "response.function_call_arguments.delta", **at, delta=call["arguments"]
                    )
                    await send(
                        "response.function_call_arguments.done", **at, arguments=call["arguments"]
                    )
                    await send("response.output_item.done", output_index=index, item=call)
            usage = gen.usage or Usage(len(gen.prompts[0]), generated)
            status = _status(finish)
            body = response.final(status, output, finish, usage, reasoned)
            await send(f"response.{status}", response=body)
        except (ConnectionResetError, ConnectionError):
            log.info("client disconnected mid-stream; aborting", engine_request=gen.request_id)
        except APIError as exc:
            await _error(send, exc.message, exc.code)
    return sse


def _plainly_text(plan: ToolPlan, pieces: list[str]) -> bool:
    """Whether the answer so far is text for sure: the plan allows text ("auto") and the
    first non-blank character is not the ``[`` that opens calls."""
    if not plan.optional or plan.named is not None:
        return False
    head = "".join(pieces).lstrip()
    return bool(head) and not head.startswith("[")


def _status(finish: str | None) -> str:
    """A finished response's status: cut by the token limit, or complete."""
    return "incomplete" if finish == "length" else "completed"


def _count_calls(request: web.Request, model: str, output: list[dict[str, Any]]) -> None:
    calls = sum(item["type"] == "function_call" for item in output)
    if calls:
        request.app[METRICS].tool_calls.labels(model).inc(calls)


async def _error(send: Callable[..., Awaitable[None]], message: str, code: str | None) -> None:
    """The stream's ``error`` event (the body of an OpenAI error, flattened as the API does)."""
    err = error_body(message, "server_error", code=code)["error"]
    await send("error", code=err.get("code"), message=err["message"], param=err.get("param"))
