"""Llama-family models from GGUF and safetensors: config, weights, tokenizer, chat template,
a model repository on disk, and GGUF -> safetensors conversion."""

from inferno_models.chat import ChatTemplate, ChatTemplateError
from inferno_models.config import ModelConfig, RopeScaling
from inferno_models.convert import convert_gguf_to_hf
from inferno_models.errors import (
    ModelError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from inferno_models.generation import DEFAULT_MODEL_GENERATION, GenerationDefaults
from inferno_models.gguf_loader import GGUFFile
from inferno_models.loader import DEFAULT_MODEL_FILE, LlamaLoader, default_model_path
from inferno_models.lora import LoraAdapter, apply_lora, load_lora
from inferno_models.protocols import LoadedModel, ModelLoader
from inferno_models.repository import (
    DEFAULT_MODEL_NAME,
    ModelEntry,
    ModelRepository,
    load_model,
)
from inferno_models.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_GENERATION",
    "DEFAULT_MODEL_NAME",
    "ChatTemplate",
    "ChatTemplateError",
    "GGUFFile",
    "GenerationDefaults",
    "IncrementalDetokenizer",
    "LlamaLoader",
    "LoadedModel",
    "LoraAdapter",
    "ModelConfig",
    "ModelEntry",
    "ModelError",
    "ModelFormatError",
    "ModelLoader",
    "ModelNotFoundError",
    "ModelRepository",
    "RopeScaling",
    "Tokenizer",
    "UnsupportedModelError",
    "apply_lora",
    "convert_gguf_to_hf",
    "default_model_path",
    "load_lora",
    "load_model",
]
