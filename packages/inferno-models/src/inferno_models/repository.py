"""A model repository: the models in a directory (GGUF files and Hugging Face directories)
plus the default model, under stable names."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from inferno_models.config import ModelConfig
from inferno_models.errors import ModelError, ModelNotFoundError, UnsupportedModelError
from inferno_models.generation import GenerationDefaults
from inferno_models.gguf_summary import scan_gguf
from inferno_models.loader import LlamaLoader, default_model_path, gguf_generation_defaults
from inferno_models.protocols import LoadedModel

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelEntry",
    "ModelRepository",
    "default_models_dir",
    "load_model",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
#: Names that always resolve to the default model.
DEFAULT_ALIASES = frozenset({"default", DEFAULT_MODEL_NAME})
_NAME_OK = re.compile(r"[^a-z0-9._-]+")


def default_models_dir() -> Path:
    """``$INFERNO_MODELS_DIR``, else ``~/.cache/inferno/models``."""
    env = os.environ.get("INFERNO_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "inferno" / "models"


def stable_name(path: Path) -> str:
    """A model's repository name: its file stem or directory name, lower-cased, with anything
    outside ``[a-z0-9._-]`` replaced by ``-``."""
    base = path.stem if path.suffix == ".gguf" else path.name
    return _NAME_OK.sub("-", base.lower()).strip("-.") or "model"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of the repository, with what a listing shows."""

    name: str
    path: Path
    format: Literal["gguf", "safetensors"]
    architecture: str
    parameters: int
    quantization: str
    size_bytes: int
    context_length: int | None = None
    aliases: tuple[str, ...] = field(default=())
    #: The sampling settings the model recommends (`GenerationDefaults.to_dict`).
    sampling_defaults: dict[str, float | int] = field(default_factory=dict, hash=False)

    def sha256(self) -> str:
        """SHA-256 of the model's weights (all files of a directory, in name order)."""
        digest = hashlib.sha256()
        files = [self.path] if self.path.is_file() else sorted(self.path.iterdir())
        for file in files:
            if file.is_file():
                with file.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["aliases"] = list(self.aliases)
        return data


def describe(path: Path, name: str | None = None) -> ModelEntry:
    """Summarize the model at ``path`` without loading its weights.

    Raises:
        ModelFormatError: the file or directory is not a readable model (a GGUF adapter is
            an `UnsupportedModelError`).
    """
    if path.is_dir():
        config = ModelConfig.from_hf_file(path / "config.json")
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return ModelEntry(
            name=name or stable_name(path),
            path=path,
            format="safetensors",
            architecture=config.architecture,
            parameters=config.num_parameters(),
            quantization="none",
            size_bytes=size,
            context_length=config.max_position_embeddings,
            sampling_defaults=GenerationDefaults.from_hf_generation_config(
                path / "generation_config.json"
            ).to_dict(),
        )
    summary = scan_gguf(path)
    if summary.metadata.get("general.type") == "adapter":
        # A LoRA adapter beside the models is merged into one (load_lora), never served alone.
        raise UnsupportedModelError(path, "this GGUF is an adapter, not a model")
    arch = str(summary.metadata.get("general.architecture", "unknown"))
    context = summary.metadata.get(f"{arch}.context_length")
    return ModelEntry(
        name=name or stable_name(path),
        path=path,
        format="gguf",
        architecture=arch,
        parameters=summary.parameter_count,
        quantization=summary.quantization,
        size_bytes=path.stat().st_size,
        context_length=int(context) if context is not None else None,
        sampling_defaults=gguf_generation_defaults(path, summary.metadata).to_dict(),
    )


class ModelRepository:
    """The models under ``models_dir`` (``*.gguf`` files and directories holding a
    ``config.json``), plus the default model.

    Names are looked up in the listing only, never joined onto a path, so no name can reach
    outside the directory.
    """

    def __init__(self, models_dir: Path | None = None, *, include_default: bool = True) -> None:
        self.models_dir = (models_dir or default_models_dir()).expanduser()
        self.include_default = include_default

    def list(self) -> list[ModelEntry]:
        """Every model, the default first; unreadable files are skipped."""
        entries: list[ModelEntry] = []
        if self.include_default:
            with contextlib.suppress(ModelError):
                entries.append(self._default())
        seen = {e.name for e in entries}
        for path in self._candidates():
            try:
                entry = describe(path)
            except ModelError:
                continue
            if entry.name not in seen:
                seen.add(entry.name)
                entries.append(entry)
        return entries

    @staticmethod
    def _default() -> ModelEntry:
        entry = describe(default_model_path(), DEFAULT_MODEL_NAME)
        return replace(entry, aliases=("default",))

    def _candidates(self) -> builtins.list[Path]:
        root = self.models_dir
        if not root.is_dir():
            return []
        out: builtins.list[Path] = []
        for path in sorted(root.iterdir()):
            resolved = path.resolve()
            # A symlink pointing outside the directory is not part of the repository.
            if not resolved.is_relative_to(root.resolve()):
                continue
            if (path.is_file() and path.suffix == ".gguf") or (
                path.is_dir() and (path / "config.json").is_file()
            ):
                out.append(path)
        return out

    def get(self, name: str) -> ModelEntry:
        """The model called ``name`` (an alias such as ``default`` included).

        Raises:
            ModelNotFoundError: no such model.
        """
        key = name.strip().lower()
        if key in DEFAULT_ALIASES and self.include_default:
            return self._default()
        for entry in self.list():
            if key == entry.name or key in entry.aliases:
                return entry
        raise ModelNotFoundError(f"no model named {name!r} in {self.models_dir}")

    def resolve(self, name_or_path: str) -> ModelEntry:
        """A repository name, or (for command-line use) a path to a model file or directory."""
        candidate = Path(name_or_path).expanduser()
        looks_like_path = os.sep in name_or_path or name_or_path.endswith(".gguf")
        if looks_like_path or (candidate.exists() and name_or_path.lower() not in DEFAULT_ALIASES):
            if not candidate.exists():
                raise ModelNotFoundError(f"{candidate}: no such model file or directory")
            return describe(candidate.resolve())
        return self.get(name_or_path)


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    repository: ModelRepository | None = None,
) -> LoadedModel:
    """Resolve ``name_or_path`` in ``repository`` (default: `ModelRepository()`) and load it.

    ``load_model("default")`` loads SmolLM2-135M-Instruct.
    """
    entry = (repository or ModelRepository()).resolve(name_or_path)
    return LlamaLoader().load(entry.path, dtype=dtype, device=device, name=entry.name)
