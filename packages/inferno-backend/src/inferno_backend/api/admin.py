"""``POST /v1/admin/models/load`` and ``/unload``: change the served models at run time.

Guarded by the admin key (see the auth middleware).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from inferno_models.errors import ModelError
from pydantic import BaseModel, ConfigDict, Field

from inferno_backend.api.errors import BadRequestError, NotFoundError
from inferno_backend.api.keys import ORCHESTRATOR
from inferno_backend.api.openai_routes import parse_body
from inferno_backend.orchestrator import ModelNotServedError

__all__ = ["LoadModelRequest", "UnloadModelRequest", "routes"]

routes = web.RouteTableDef()


class LoadModelRequest(BaseModel):
    """Body of the load route."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Name or path of the model to load.")
    served_model_name: str | None = Field(
        default=None, min_length=1, description="Name clients use; defaults to ``model``."
    )
    lora: str | None = Field(
        default=None,
        min_length=1,
        description="Path of a LoRA adapter to merge into the model: a PEFT directory or a "
        "llama.cpp GGUF adapter file.",
    )


class UnloadModelRequest(BaseModel):
    """Body of the unload route."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Served name of the model to unload.")


@routes.post("/v1/admin/models/load")
async def load(request: web.Request) -> web.Response:
    """Load a model and start serving it; 409 if that name is already served."""
    body = await parse_body(request, LoadModelRequest)
    orchestrator = request.app[ORCHESTRATOR]
    name = body.served_model_name or body.model
    if name in orchestrator.served:
        raise BadRequestError(
            f"the model {name!r} is already loaded", param="model", code="model_already_loaded"
        )
    if body.lora is not None and not await asyncio.to_thread(_exists, body.lora):
        raise NotFoundError(f"no LoRA adapter at {body.lora}", param="lora", code="lora_not_found")
    try:
        served = await orchestrator.load_model(body.model, served_name=name, lora=body.lora)
    except LookupError as exc:
        raise NotFoundError(str(exc), param="model", code="model_not_found") from None
    except (ModelError, ValueError) as exc:
        raise BadRequestError(str(exc), param="model", code="model_load_failed") from None
    return web.json_response(
        {"model": served.name, "loaded": True, "max_model_len": served.max_model_len}
    )


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


@routes.post("/v1/admin/models/unload")
async def unload(request: web.Request) -> web.Response:
    """Drain and unload a served model; reports whether its memory came back."""
    body = await parse_body(request, UnloadModelRequest)
    try:
        leaked = await request.app[ORCHESTRATOR].unload_model(body.model)
    except ModelNotServedError as exc:
        raise NotFoundError(str(exc), param="model", code="model_not_found") from None
    return web.json_response(
        {
            "model": body.model,
            "unloaded": True,
            "leaked_bytes": leaked,
            "memory_returned": leaked == 0,
        }
    )
