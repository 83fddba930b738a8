"""Runs one API request on an engine: builds sampling parameters, fans prompts out, merges
their streams, observes latency metrics and publishes `RequestFinished`.

Closing the stream early (a client that went away) closes every engine stream, which aborts
the engine requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from inferno_inference import (
    EngineStoppedError,
    GenerationOutput,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
    Usage,
)
from inferno_models.generation import GenerationDefaults
from pydantic import ValidationError

from inferno_backend.api.errors import (
    BadRequestError,
    ServiceUnavailableError,
    from_validation_error,
)
from inferno_backend.api.reasoning import THINK_END, THINK_START, ThinkStart
from inferno_backend.api.schemas import SamplingFields
from inferno_backend.api.tools import ToolPlan
from inferno_backend.events import EventBus, RequestFinished
from inferno_backend.metrics import Metrics
from inferno_backend.orchestrator import ServedModel

__all__ = ["Generation", "PromptOutput", "build_sampling", "check_context", "engine_errors"]


def build_sampling(
    body: SamplingFields,
    *,
    max_tokens: int,
    logprobs: int | None,
    defaults: GenerationDefaults | None = None,
    prompt_logprobs: int | None = None,
    think: ThinkStart | None = None,
) -> SamplingParams:
    """Engine sampling parameters for an API request.

    A field the request leaves out comes from ``defaults`` (the served model's), then from
    OpenAI's defaults. ``top_p=0`` (allowed by OpenAI, not by the engine) means "only the
    likeliest token", i.e. greedy sampling. ``think`` (None: the model's reasoning is not
    split) says where the output starts relative to a think block: JSON output, tool calls
    and choices then hold from the block's end, so a reasoning model thinks first, and
    ``thinking_token_budget`` cuts the block.
    """
    d = defaults or GenerationDefaults()
    temperature = _first(body.temperature, d.temperature, 1.0)
    top_p = _first(body.top_p, d.top_p, 1.0)
    if top_p == 0:
        temperature, top_p = 0.0, 1.0
    response_format, json_schema = body.output_format  # encodes the schema once
    constrained = response_format != "text" or any(
        value is not None for value in (body.guided_choice, body.guided_regex, body.grammar)
    )
    budget = body.thinking_token_budget
    after = think is not None and think != "closed" and (constrained or budget is not None)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=_first(body.top_k, d.top_k, 0),
            min_p=_first(body.min_p, d.min_p, 0.0),
            repetition_penalty=_first(body.repetition_penalty, d.repetition_penalty, 1.0),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            # The engine seeds torch generators, which take non-negative 64-bit seeds.
            seed=None if body.seed is None else body.seed % 2**63,
            stop=body.stop_list,
            ignore_eos=body.ignore_eos,
            n=body.n,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=body.logit_bias_pairs,
            response_format=response_format,
            json_schema=json_schema,
            json_optional=body.optional_output,
            choices=tuple(body.guided_choice or ()),
            regex=body.guided_regex,
            grammar=body.grammar,
            reasoning_end=THINK_END if after else None,
            reasoning_start=THINK_START if after and think == "none" else None,
            reasoning_budget=budget if after else None,
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from None


_Number = TypeVar("_Number", int, float)


def _first(requested: _Number | None, default: _Number | None, fallback: _Number) -> _Number:
    if requested is not None:
        return requested
    return default if default is not None else fallback


def check_context(prompt_len: int, requested: int | None, max_model_len: int, param: str) -> int:
    """The token budget of a request, or a 400 when the prompt and budget do not fit.

    Returns ``requested``, or everything left in the context when it is None.
    """
    if prompt_len >= max_model_len:
        raise BadRequestError(
            f"this model's maximum context length is {max_model_len} tokens, but the prompt "
            f"has {prompt_len} tokens; shorten it",
            param=param,
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    if requested is not None and requested > room:
        raise BadRequestError(
            f"this model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_len} and max_tokens asks for {requested} more (at most {room} fit)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested if requested is not None else room


@dataclass(frozen=True, slots=True)
class PromptOutput:
    """One engine output, tagged with the prompt it belongs to (completions batch prompts)."""

    prompt_index: int
    output: GenerationOutput


@dataclass(slots=True)
class Generation:
    """A request's streams for one or more prompts on one served model.

    Iterate `stream()` once. ``usage`` holds the summed usage when every prompt finished.
    """

    served: ServedModel
    request_id: str
    prompts: Sequence[Sequence[int]]
    sampling: SamplingParams
    metrics: Metrics
    bus: EventBus
    arrival: float
    prompt_param: str = "prompt"
    #: The request's tool calls, whose schema errors are reported against its tools.
    tool_plan: ToolPlan | None = None
    #: The engine's scheduling priority (lower first).
    priority: int = 0
    usage: Usage | None = None
    #: ``time.perf_counter()`` when the first token came (None before it).
    first_token_at: float | None = None
    finish_reasons: list[str] = field(default_factory=list)
    _usages: list[Usage] = field(default_factory=list)

    async def stream(self) -> AsyncGenerator[PromptOutput, None]:
        """Every output of every prompt, as it comes.

        Raises:
            BadRequestError: the engine rejected the request (before anything streamed).
            ServiceUnavailableError: the engine is shut down.
        """
        model = self.served.name
        # Until the engine reports when it first scheduled the request (in the final usage),
        # the queue time is counted from arrival to the hand-off.
        handed_off = time.perf_counter() - self.arrival
        first: float | None = None
        last: dict[tuple[int, int], float] = {}
        completion_tokens = 0
        try:
            async for item in self._merged():
                now = time.perf_counter()
                out = item.output
                if out.token_ids:
                    if first is None:
                        first = self.first_token_at = now
                        self.metrics.time_to_first_token.labels(model).observe(now - self.arrival)
                    key = (item.prompt_index, out.index)
                    if key in last:
                        gap = (now - last[key]) / len(out.token_ids)
                        for _ in out.token_ids:
                            self.metrics.inter_token_latency.labels(model).observe(gap)
                    last[key] = now
                    completion_tokens += len(out.token_ids)
                if out.finish_reason is not None:
                    self.finish_reasons.append(out.finish_reason)
                if out.usage is not None:
                    self._usages.append(out.usage)
                yield PromptOutput(item.prompt_index, _content_logprobs(out))
        finally:
            seconds = time.perf_counter() - self.arrival
            prompt_tokens = sum(len(p) for p in self.prompts)
            self.metrics.e2e_latency.labels(model).observe(seconds)
            self.metrics.prompt_tokens.labels(model).inc(prompt_tokens)
            self.metrics.generation_tokens.labels(model).inc(completion_tokens)
            reasons = tuple(self.finish_reasons) or ("abort",)
            for reason in set(reasons):
                self.metrics.requests.labels(model, reason).inc()
            kind: str = self.sampling.response_format
            if self.tool_plan is not None:
                kind = "tools"
            elif self.sampling.choices:
                kind = "choice"
            elif self.sampling.regex is not None:
                kind = "regex"
            elif self.sampling.grammar is not None:
                kind = "grammar"
            if kind != "text":
                self.metrics.structured_requests.labels(model, kind).inc()
            engine_queue = [u.queue_time_s for u in self._usages if u.queue_time_s is not None]
            self.metrics.queue_time.labels(model).observe(
                handed_off + max(engine_queue) if engine_queue else handed_off
            )
            if len(self._usages) == len(self.prompts):
                self.usage = Usage(
                    prompt_tokens=sum(u.prompt_tokens for u in self._usages),
                    completion_tokens=sum(u.completion_tokens for u in self._usages),
                    cached_prompt_tokens=sum(u.cached_prompt_tokens for u in self._usages),
                )
            self.bus.publish(
                RequestFinished(
                    request_id=self.request_id,
                    model=model,
                    finish_reasons=reasons,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    seconds=seconds,
                )
            )

    def _request(self, index: int) -> GenerationRequest:
        rid = self.request_id if len(self.prompts) == 1 else f"{self.request_id}-{index}"
        return GenerationRequest(
            rid, tuple(self.prompts[index]), self.sampling, priority=self.priority
        )

    async def _merged(self) -> AsyncIterator[PromptOutput]:
        engine = self.served.engine
        if len(self.prompts) == 1:
            # The common case needs no tasks: iterate the engine stream directly.
            async with _closing(engine.generate(self._request(0))) as stream:
                with engine_errors(self.prompt_param, self.tool_plan):
                    async for out in stream:
                        yield PromptOutput(0, out)
            return
        queue: asyncio.Queue[PromptOutput | BaseException | None] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                stream = engine.generate(self._request(index))
                async with _closing(stream):
                    with engine_errors(f"{self.prompt_param}.{index}", self.tool_plan):
                        async for out in stream:
                            await queue.put(PromptOutput(index, out))
            except Exception as exc:
                await queue.put(exc)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self.prompts))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _content_logprobs(out: GenerationOutput) -> GenerationOutput:
    """``out`` without the log-probability of the token that stopped it (an end of turn or a
    stop token id), whose text is not in the answer: logprobs describe the content."""
    lps = out.logprobs
    stop = out.stop_reason
    if isinstance(stop, int) and lps and out.token_ids and lps[-1].token_id == stop:
        return dataclasses.replace(out, logprobs=lps[:-1])
    return out


@contextlib.asynccontextmanager
async def _closing(
    stream: AsyncIterator[GenerationOutput],
) -> AsyncIterator[AsyncIterator[GenerationOutput]]:
    """Close an engine stream on exit, which aborts its request if it is still running."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


#: The engine's names for a request's tokens, reported under the API field that carried them.
_ENGINE_INPUT_PARAMS = frozenset({"prompt", "input"})


@contextlib.contextmanager
def engine_errors(param: str, tool_plan: ToolPlan | None = None) -> Iterator[None]:
    """Re-raise the engine's typed errors as API errors; ``param`` is the API field (``prompt.1``,
    ``input.3``) whose tokens the engine was given. Other engine errors (a failed step) pass."""
    try:
        yield
    except PromptTooLongError as exc:
        raise BadRequestError(str(exc), param=param, code="context_length_exceeded") from None
    except InvalidRequestError as exc:
        if tool_plan is not None and exc.param == "response_format":  # the tools' schema
            raise BadRequestError(
                tool_plan.explain(str(exc)), param="tools", code="invalid_value"
            ) from None
        name = param if exc.param in _ENGINE_INPUT_PARAMS else exc.param
        raise BadRequestError(str(exc), param=name, code="invalid_value") from None
    except EngineStoppedError as exc:
        raise ServiceUnavailableError(f"the model is not serving: {exc}") from None
