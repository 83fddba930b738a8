"""What the orchestrator needs from its collaborators, as structural protocols.

The concrete defaults (inferno-models' loader and repository, inferno-inference's engine,
inferno-memory's statistics adaptor) satisfy them; tests pass small fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from inferno_inference import InferenceEngine
from inferno_memory.protocols import MemoryResource, StatisticsSource
from inferno_models.config import ModelConfig
from inferno_models.generation import GenerationDefaults

__all__ = [
    "ChatTemplateLike",
    "EngineFactory",
    "ModelSource",
    "ServableModel",
    "StatisticsResource",
    "TokenizerLike",
]


class TokenizerLike(Protocol):
    """Text <-> token ids (``inferno_models.Tokenizer``)."""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the model's BOS is prepended."""
        ...

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        ...

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of ``token_id`` (None outside the vocabulary)."""
        ...


class ChatTemplateLike(Protocol):
    """Renders a conversation into the prompt text the model was trained on."""

    @property
    def source(self) -> str:
        """The template's text (read to tell whether the model writes ``</think>``)."""
        ...

    def render(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text of ``messages`` (each with ``role`` and ``content``); ``extra``
        are further variables for the template (``enable_thinking``)."""
        ...


class ServableModel(Protocol):
    """A loaded model as the daemon uses it (``inferno_models.LoadedModel`` fits)."""

    @property
    def name(self) -> str:
        """The model's name."""
        ...

    @property
    def config(self) -> ModelConfig:
        """Its shape; ``max_position_embeddings`` bounds the context."""
        ...

    @property
    def tokenizer(self) -> TokenizerLike:
        """Its tokenizer."""
        ...

    @property
    def chat_template(self) -> ChatTemplateLike | None:
        """Its chat template, or None for a base model."""
        ...

    @property
    def generation(self) -> GenerationDefaults:
        """The sampling settings it recommends for requests that leave them out."""
        ...

    def nbytes(self) -> int:
        """Bytes of its weights."""
        ...


@runtime_checkable
class ModelSource(Protocol):
    """Where models come from: the names it knows and a (blocking) loader.

    ``load`` is called on a worker thread at start-up and on admin load; it raises
    ``inferno_models.ModelNotFoundError`` for an unknown name.
    """

    def available(self) -> Sequence[str]:
        """Names that `load` accepts (aliases included)."""
        ...

    def load(self, name: str, *, lora: str | None = None) -> ServableModel:
        """Read the model called (or at path) ``name``, with the LoRA adapter at ``lora``
        merged into it when given."""
        ...


class StatisticsResource(MemoryResource, StatisticsSource, Protocol):
    """A memory resource that also reports statistics (a ``StatisticsAdaptor`` over a pool)."""


EngineFactory = Callable[[ServableModel, StatisticsResource], InferenceEngine]
"""Builds an engine for a model, drawing its KV cache from the given memory resource. Called on a
worker thread, since it allocates the cache."""
