"""Reading Hugging Face safetensors checkpoints, single-file or sharded, memory-mapped."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from inferno_models.config import ModelConfig
from inferno_models.errors import ModelFormatError
from inferno_models.names import checkpoint_shapes, split_fused

__all__ = ["iter_safetensors_weights", "read_safetensors", "safetensors_files"]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def safetensors_files(directory: Path) -> dict[str, Path]:
    """Map each tensor name to the file holding it (from the shard index, or the single file).

    Raises:
        ModelFormatError: no checkpoint, or an index that is unreadable or names missing shards.
    """
    index = directory / _INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(index, f"unreadable shard index: {exc}") from None
        files = {name: directory / shard for name, shard in weight_map.items()}
        for shard in set(files.values()):
            if not shard.is_file():
                raise ModelFormatError(index, f"names missing shard {shard.name}")
        return files
    single = directory / _SINGLE
    if single.is_file():
        return dict.fromkeys(_tensor_names(single), single)
    raise ModelFormatError(directory, f"no {_SINGLE} or {_INDEX}")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at ``path``, by name, as stored.

    Raises:
        ModelFormatError: the file is unreadable or corrupt.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # the Rust reader raises SafetensorError / OSError
        raise ModelFormatError(path, f"unreadable safetensors: {exc}") from None


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # the Rust reader raises SafetensorError / OSError
        raise ModelFormatError(path, f"unreadable safetensors: {exc}") from None


def iter_safetensors_weights(
    directory: Path,
    config: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every tensor the model needs under its canonical name, shape-checked, cast to
    ``dtype`` on ``device``; a Phi-3 checkpoint's fused tensors are split into their parts.

    Raises:
        ModelFormatError: a tensor is missing, has the wrong shape, or a file is corrupt.
    """
    from safetensors import safe_open

    files = safetensors_files(directory)
    wanted = checkpoint_shapes(config)
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        if name not in files:
            raise ModelFormatError(directory, f"missing tensor {name}")
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as exc:
            raise ModelFormatError(path, f"unreadable safetensors: {exc}") from None
        with handle as f:
            for name in names:
                try:
                    tensor = f.get_tensor(name)
                except Exception as exc:
                    raise ModelFormatError(path, f"tensor {name}: {exc}") from None
                if tuple(tensor.shape) != wanted[name]:
                    raise ModelFormatError(
                        path,
                        f"tensor {name} has shape {list(tensor.shape)}, "
                        f"expected {list(wanted[name])}",
                    )
                if progress is not None:
                    progress(tensor.numel() * tensor.element_size())
                yield from split_fused(config, name, tensor.to(device=device, dtype=dtype))
