"""A continuous-batching Llama inference engine with a paged KV cache.

The request/response types, errors and the `InferenceEngine` protocol import without torch;
the engine itself (`AsyncEngine`, `LLMEngine`, `EngineConfig`, the builders) is imported on
first access, so code that only needs the seam or `inferno_inference.testing` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inferno_inference.errors import (
    EngineError,
    EngineStoppedError,
    InvalidRequestError,
    PromptTooLongError,
)
from inferno_inference.protocols import InferenceEngine
from inferno_inference.types import (
    MAX_CHOICES,
    MAX_GRAMMAR,
    MAX_LOGIT_BIAS,
    MAX_REGEX,
    EmbeddingOutput,
    EmbeddingRequest,
    EngineStats,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    Pooling,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from inferno_inference.validation import validate_embedding, validate_request

if TYPE_CHECKING:
    from inferno_inference.async_engine import AsyncEngine
    from inferno_inference.config import EngineConfig
    from inferno_inference.engine import LLMEngine
    from inferno_inference.factory import build_async_engine, build_llm_engine

_LAZY = {
    "AsyncEngine": "inferno_inference.async_engine",
    "EngineConfig": "inferno_inference.config",
    "LLMEngine": "inferno_inference.engine",
    "build_async_engine": "inferno_inference.factory",
    "build_llm_engine": "inferno_inference.factory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inferno_inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "MAX_CHOICES",
    "MAX_GRAMMAR",
    "MAX_LOGIT_BIAS",
    "MAX_REGEX",
    "AsyncEngine",
    "EmbeddingOutput",
    "EmbeddingRequest",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "FinishReason",
    "GenerationOutput",
    "GenerationRequest",
    "InferenceEngine",
    "InvalidRequestError",
    "LLMEngine",
    "Pooling",
    "PromptTooLongError",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
    "build_async_engine",
    "build_llm_engine",
    "validate_embedding",
    "validate_request",
]
