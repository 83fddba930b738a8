"""``POST /v1/embeddings``: the served model's pooled, unit-length final hidden states of text or
token ids, in OpenAI's shape: lists of floats, or base64 of the little-endian float32 bytes (what
the openai client asks for unless told otherwise, and decodes with numpy).

Each input of a batch is its own engine request; all are submitted at once so the engine
batches them. The first one to fail cancels the others, and so does a client that goes away
(aiohttp cancels the handler), which aborts them in the engine.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
import uuid
from collections.abc import Sequence

from aiohttp import web
from inferno_inference import EmbeddingOutput, EmbeddingRequest, EngineError, Pooling

from inferno_backend.api.errors import APIError, BadRequestError
from inferno_backend.api.generation import engine_errors
from inferno_backend.api.keys import METRICS, ORCHESTRATOR
from inferno_backend.api.openai_routes import admitted, encode, parse_body
from inferno_backend.api.schemas import EmbeddingsRequest
from inferno_backend.events import RequestFinished
from inferno_backend.orchestrator import ServedModel

__all__ = ["embed_inputs", "routes", "vector"]

routes = web.RouteTableDef()

#: The ``outcome`` label of a request answered with an API error, by status (else "error").
_OUTCOMES = {400: "invalid", 503: "unavailable"}


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """Embeddings of one input or a batch, in input order."""
    arrival = time.perf_counter()
    body = await parse_body(request, EmbeddingsRequest)
    async with admitted(request, body.model) as served:
        outputs = await embed_inputs(
            request,
            served,
            body.inputs,
            batch=body.is_batch,
            dimensions=body.dimensions,
            pooling=body.pooling,
            arrival=arrival,
        )
    tokens = sum(o.prompt_tokens for o in outputs)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": vector(o.embedding, body.dimensions, body.encoding_format),
        }
        for i, o in enumerate(outputs)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def embed_inputs(
    request: web.Request,
    served: ServedModel,
    inputs: Sequence[str | Sequence[int]],
    *,
    batch: bool,
    dimensions: int | None,
    pooling: Pooling = "mean",
    arrival: float,
    truncate: bool = False,
) -> list[EmbeddingOutput]:
    """The embeddings of texts (tokenized with BOS) or token ids, observed in the metrics.

    ``batch`` names errors ``input.3`` rather than ``input``; ``truncate`` cuts an input to the
    context instead of answering 400.
    """
    rid = f"embd-{uuid.uuid4().hex}"
    ids: list[list[int]] = []
    outcome = "error"
    try:
        _check_dimensions(served, dimensions)
        for x in inputs:
            tokens = await encode(served, x, special=True) if isinstance(x, str) else list(x)
            ids.append(tokens[: served.max_model_len] if truncate else tokens)
        params = [f"input.{i}" if batch else "input" for i in range(len(ids))]
        outputs = await _embed_all(request, served, rid, ids, params, pooling)
        outcome = "success"
    except APIError as exc:
        outcome = _OUTCOMES.get(exc.status, "error")
        raise
    except asyncio.CancelledError:
        outcome = "abort"
        raise
    finally:
        _observe(request, served, rid, outcome, ids, time.perf_counter() - arrival)
    return outputs


def _check_dimensions(served: ServedModel, dimensions: int | None) -> None:
    hidden = served.model.config.hidden_size
    if dimensions is not None and dimensions > hidden:
        raise BadRequestError(
            f"dimensions: the model {served.name!r} embeds in {hidden} dimensions; ask for at "
            f"most {hidden}",
            param="dimensions",
        )


async def _embed_all(
    request: web.Request,
    served: ServedModel,
    rid: str,
    inputs: Sequence[Sequence[int]],
    params: Sequence[str],
    pooling: Pooling,
) -> list[EmbeddingOutput]:
    """Every input's embedding, submitted together; 500 ``engine_error`` if a step failed."""
    engine = served.engine

    async def one(i: int) -> EmbeddingOutput:
        with engine_errors(params[i]):
            out = await engine.embed(EmbeddingRequest(f"{rid}-{i}", tuple(inputs[i]), pooling))
        if not all(math.isfinite(v) for v in out.embedding):  # JSON has no NaN; nor should we
            raise EngineError(f"the model gave input {i} a non-finite embedding")
        return out

    try:
        if len(inputs) == 1:
            return [await one(0)]  # the common case needs no tasks
        tasks = [asyncio.create_task(one(i)) for i in range(len(inputs))]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # gather leaves the others running when one fails (or the handler is cancelled):
            # cancel them, which aborts their engine requests, and wait until they are gone.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    except EngineError as exc:  # what engine_errors leaves: a failed step
        message = str(exc) or "the engine failed"
        request.app[ORCHESTRATOR].report_engine_failure(served.name, message, rid)
        raise APIError(f"embedding failed: {message}", code="engine_error") from None


def vector(
    values: Sequence[float], dimensions: int | None, encoding: str = "float"
) -> list[float] | str:
    """One embedding as the response carries it: shortened to ``dimensions`` and scaled back to
    unit length (as OpenAI shortens), then a list or base64 of little-endian float32."""
    if dimensions is not None and dimensions < len(values):
        head = values[:dimensions]
        norm = math.sqrt(math.fsum(v * v for v in head))
        values = [v / norm for v in head] if norm else list(head)
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return list(values)


def _observe(
    request: web.Request,
    served: ServedModel,
    rid: str,
    outcome: str,
    inputs: Sequence[Sequence[int]],
    seconds: float,
) -> None:
    """Count the request and its tokens, and publish `RequestFinished`."""
    prompt_tokens = sum(len(ids) for ids in inputs)
    metrics = request.app[METRICS]
    metrics.embedding_requests.labels(served.name, outcome).inc()
    if outcome == "success":
        metrics.embedding_latency.labels(served.name).observe(seconds)
    metrics.prompt_tokens.labels(served.name).inc(prompt_tokens)
    reason = {"success": "stop", "error": "error"}.get(outcome, "abort")
    request.app[ORCHESTRATOR].bus.publish(
        RequestFinished(
            request_id=rid,
            model=served.name,
            finish_reasons=(reason,),
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            seconds=seconds,
        )
    )
