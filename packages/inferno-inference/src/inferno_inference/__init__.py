"""A continuous-batching Llama inference engine with a paged KV cache."""

from inferno_inference.errors import (
    EngineError,
    EngineStoppedError,
    InvalidRequestError,
    PromptTooLongError,
)
from inferno_inference.protocols import InferenceEngine
from inferno_inference.types import (
    EngineStats,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from inferno_inference.validation import validate_request

__all__ = [
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "FinishReason",
    "GenerationOutput",
    "GenerationRequest",
    "InferenceEngine",
    "InvalidRequestError",
    "PromptTooLongError",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
    "validate_request",
]
