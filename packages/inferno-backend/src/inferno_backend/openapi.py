"""The OpenAPI 3.1 description of the daemon's API, served at ``/openapi.json``.

Request schemas come from the pydantic models that validate the bodies, so the description
cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from inferno_backend.api.admin import LoadModelRequest, UnloadModelRequest
from inferno_backend.api.ollama_schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
)
from inferno_backend.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingsRequest,
    ResponsesRequest,
    TokenizeRequest,
)

__all__ = ["build_openapi"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_JSON_OBJECT = {"type": "object", "additionalProperties": True}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    return {str(s): _json(error, "An OpenAI error body.") for s in statuses}


def _post(summary: str, model: type[BaseModel], *, stream: bool | str, admin: bool = False) -> Any:
    ok: dict[str, Any] = _json(_JSON_OBJECT, "The result.")
    if stream == "ndjson":
        ok["content"]["application/x-ndjson"] = {
            "schema": {"type": "string", "description": "JSON lines, the last with done: true"}
        }
    elif stream:
        ok["content"]["text/event-stream"] = {
            "schema": {"type": "string", "description": "data: <chunk JSON> lines, then [DONE]"}
        }
    codes = (400, 401, 403, 404, 413, 429, 503) if admin else (400, 401, 404, 413, 429, 503)
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(model)}},
            },
            "responses": {"200": ok, **_errors(*codes)},
            **({"security": [{"adminKey": []}]} if admin else {}),
        }
    }


def _get(
    summary: str, *, probe: bool = False, text: bool = False, path_param: str | None = None
) -> Any:
    ok: dict[str, Any] = _json(_JSON_OBJECT, "The result.")
    if text:
        ok = {"description": "Prometheus text format.", "content": {"text/plain": {}}}
    responses: dict[str, Any] = {"200": ok}
    if probe:
        responses["503"] = _json(_JSON_OBJECT, "The probe fails; the body says why.")
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if path_param is not None:
        responses.update(_errors(401, 404, 429))
        operation["parameters"] = [
            {"name": path_param, "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return {"get": operation}


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document (a JSON-compatible dict)."""
    models: list[type[BaseModel]] = [
        ChatCompletionRequest,
        CompletionRequest,
        ResponsesRequest,
        EmbeddingsRequest,
        TokenizeRequest,
        DetokenizeRequest,
        LoadModelRequest,
        UnloadModelRequest,
        OllamaChatRequest,
        OllamaGenerateRequest,
        OllamaEmbedRequest,
        OllamaEmbeddingsRequest,
        OllamaShowRequest,
    ]
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Inferno",
            "version": "0.1.0",
            "description": "OpenAI-compatible LLM serving API of the Inferno daemon.",
        },
        "paths": {
            "/v1/models": _get("List the served models."),
            "/v1/models/{model}": _get("Describe one served model.", path_param="model"),
            "/v1/chat/completions": _post(
                "Create a chat completion.", ChatCompletionRequest, stream=True
            ),
            "/v1/completions": _post("Create a text completion.", CompletionRequest, stream=True),
            "/v1/responses": _post(
                "Create a response (Responses API, text only).", ResponsesRequest, stream=True
            ),
            "/v1/responses/{response_id}": {
                **_get("A kept response.", path_param="response_id"),
                "delete": _get("Forget a kept response.", path_param="response_id")["get"],
            },
            "/v1/embeddings": _post(
                "Create embeddings of text or token ids.", EmbeddingsRequest, stream=False
            ),
            "/tokenize": _post(
                "Token ids of a prompt or of chat messages.", TokenizeRequest, stream=False
            ),
            "/detokenize": _post("Text of token ids.", DetokenizeRequest, stream=False),
            "/v1/status": _get("Load of the daemon: queue, running, KV usage, free slots."),
            "/v1/admin/models/load": _post(
                "Load a model.", LoadModelRequest, stream=False, admin=True
            ),
            "/v1/admin/models/unload": _post(
                "Unload a model.", UnloadModelRequest, stream=False, admin=True
            ),
            "/health/live": _get("Liveness probe.", probe=True),
            "/health/ready": _get("Readiness probe.", probe=True),
            "/health/startup": _get("Startup probe.", probe=True),
            "/metrics": _get("Prometheus metrics.", text=True),
            "/api/chat": _post("Ollama: a chat turn.", OllamaChatRequest, stream="ndjson"),
            "/api/generate": _post(
                "Ollama: complete a prompt.", OllamaGenerateRequest, stream="ndjson"
            ),
            "/api/embed": _post("Ollama: embeddings of texts.", OllamaEmbedRequest, stream=False),
            "/api/embeddings": _post(
                "Ollama: one text's embedding (older route).", OllamaEmbeddingsRequest, stream=False
            ),
            "/api/show": _post("Ollama: describe a served model.", OllamaShowRequest, stream=False),
            "/api/tags": _get("Ollama: the served models."),
            "/api/ps": _get("Ollama: the loaded models."),
            "/api/version": _get("Ollama: the server's version."),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "adminKey": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
