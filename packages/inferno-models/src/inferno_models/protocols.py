"""The seam of inferno-models: a loader turns a source into a `LoadedModel`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from inferno_models.config import ModelConfig
from inferno_models.generation import GenerationDefaults

if TYPE_CHECKING:
    from inferno_models.chat import ChatTemplate
    from inferno_models.tokenizer import Tokenizer

__all__ = ["LoadedModel", "ModelLoader"]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready for an engine: its config, weights under canonical names, tokenizer,
    chat template (``None`` when the model has none), and the sampling settings it recommends."""

    config: ModelConfig
    weights: dict[str, torch.Tensor] = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)
    chat_template: ChatTemplate | None = field(repr=False)
    source: Path
    name: str
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)

    def nbytes(self) -> int:
        """Bytes held by the weights."""
        return sum(t.numel() * t.element_size() for t in self.weights.values())


@runtime_checkable
class ModelLoader(Protocol):
    """Loads a model from a path (a ``.gguf`` file or a Hugging Face directory).

    ``load`` is called once per model load by the daemon (at start and on admin load); it reads
    the whole model and returns it on ``device`` in ``dtype``. It raises
    `inferno_models.ModelFormatError` for a malformed source, never a raw parsing error.
    """

    def load(
        self, source: str | Path, *, dtype: torch.dtype = ..., device: str | torch.device = ...
    ) -> LoadedModel:
        """Load the model at ``source``."""
        ...
