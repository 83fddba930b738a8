"""The in-process engine a daemon's answers are compared with."""

from __future__ import annotations

from collections.abc import Sequence

from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_memory import HostMemoryResource
from inferno_models import LoadedModel

__all__ = ["local_text"]


def local_text(loaded: LoadedModel, prompt: Sequence[int], sampling: SamplingParams) -> str:
    """The text a plain fp32 engine over ``loaded`` generates for ``prompt``."""
    engine = build_llm_engine(
        loaded.config,
        loaded.weights,
        EngineConfig(dtype="float32"),
        HostMemoryResource(),
        tokenizer=loaded.tokenizer,
    )
    engine.add_request(GenerationRequest("local", tuple(prompt), sampling))
    text = ""
    while engine.has_work():
        text += "".join(o.text for o in engine.step())
    return text
