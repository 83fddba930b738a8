"""LoRA adapters in PEFT's format and llama.cpp's GGUF, merged into a loaded model's weights.

An adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors`` (what
``peft``'s ``save_pretrained`` writes), or a GGUF file as llama.cpp's ``convert_lora_to_gguf.py``
writes it (`inferno_models.lora_gguf`). Each adapted linear ``W`` (``[out, in]``) gets
``W + s * B @ A``, with ``A`` ``[r, in]``, ``B`` ``[out, r]`` and ``s = alpha / r`` (``alpha /
sqrt(r)`` with rsLoRA; ``rank_pattern`` and ``alpha_pattern`` override both per module). After
the merge the model is an ordinary one: every engine path (the C kernels, int8 weights, CUDA
graphs) runs it at the base model's speed.

The attention and MLP projections may be adapted. Adapters that touch anything else (the
embeddings or the output head, trained biases, ``modules_to_save``) or that need more than a
merge (DoRA) are refused with `UnsupportedModelError`, and a malformed adapter with
`ModelFormatError`; both name the file and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch

from inferno_models.config import ModelConfig
from inferno_models.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from inferno_models.gguf_loader import unpermute_rope
from inferno_models.names import expected_shapes
from inferno_models.protocols import LoadedModel
from inferno_models.safetensors_loader import read_safetensors

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LoraAdapter", "apply_lora", "load_lora"]

log = structlog.get_logger("inferno_models.lora")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: Module suffixes an adapter may target (the weights are ``<module>.weight``).
_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: ``base_model.model.<module>.lora_A[.<adapter name>].weight``, as PEFT saves it.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$"
)


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """A LoRA adapter read from disk, not yet merged.

    ``pairs`` maps the canonical name of each adapted weight to its ``(A, B, scale)``, with
    ``A`` ``[r, in]`` and ``B`` ``[out, r]``. ``path`` is a PEFT adapter's directory or a GGUF
    adapter's file. ``rank`` is the largest ``r`` (a GGUF adapter's pairs each have their own),
    and a GGUF adapter's ``alpha`` is 0 when it has none (each scale is then 1, as in llama.cpp).

    ``architecture`` is the model family a GGUF adapter was made for (None for PEFT's format,
    which does not say). With ``rope_permuted`` (a Llama GGUF adapter) the rows of the Q and
    K projections' ``B`` are in llama.cpp's rotary order: its converter permutes them as it
    permutes the base weights. The head counts that undo this are the base model's, not in
    the adapter file, so `apply_lora` restores the Hugging Face order as it merges.
    """

    path: Path
    rank: int
    alpha: float
    base_model: str | None
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(repr=False)
    architecture: str | None = None
    rope_permuted: bool = False

    @property
    def name(self) -> str:
        """The adapter's directory name, or its GGUF file's name without ``.gguf``."""
        return self.path.name.removesuffix(".gguf")


def load_lora(path: str | Path) -> LoraAdapter:
    """Read the LoRA adapter at ``path``: a PEFT adapter (its directory, or its safetensors
    file) or a GGUF adapter file (named ``*.gguf``, or any file that starts as GGUF does).

    Raises:
        ModelNotFoundError: nothing is there.
        ModelFormatError: the config or the weights are malformed or inconsistent.
        UnsupportedModelError: a well-formed adapter this module cannot merge, or a GGUF file
            that is not a LoRA adapter (a model, a control vector).
    """
    path = Path(path).expanduser()
    if path.is_file():
        # Imported here: lora_gguf builds the LoraAdapter defined above.
        from inferno_models.lora_gguf import is_gguf, read_gguf_lora

        if is_gguf(path):
            return read_gguf_lora(path)
    directory = path.parent if path.is_file() else path
    weights = path if path.is_file() else path / ADAPTER_WEIGHTS
    config_path = directory / ADAPTER_CONFIG
    if not directory.is_dir():
        raise ModelNotFoundError(f"no LoRA adapter at {path}")
    if not config_path.is_file():
        raise ModelFormatError(directory, f"a LoRA adapter needs {ADAPTER_CONFIG}")
    if not weights.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise UnsupportedModelError(
                directory,
                "adapter_model.bin is a pickle, which is never loaded; save the adapter with "
                "safe_serialization (adapter_model.safetensors)",
            )
        raise ModelFormatError(directory, f"a LoRA adapter needs {ADAPTER_WEIGHTS}")
    config = _read_config(config_path)
    rank = _positive(config_path, config, "r")
    alpha = _number(config_path, config, "lora_alpha", default=rank)
    rslora = bool(config.get("use_rslora", False))
    rank_pattern = _pattern(config_path, config, "rank_pattern")
    alpha_pattern = _pattern(config_path, config, "alpha_pattern")
    tensors = read_safetensors(weights)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise UnsupportedModelError(
                weights,
                f"tensor {key} is not a LoRA A or B matrix (embeddings, output heads, biases "
                "and modules_to_save are not supported)",
            )
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise ModelFormatError(weights, "the adapter holds no LoRA matrices")
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in sorted(parts.items()):
        if module.rsplit(".", 1)[-1] not in _TARGETS:
            raise UnsupportedModelError(
                weights,
                f"the adapter targets {module}; only the attention and MLP projections "
                f"({', '.join(_TARGETS)}) can be merged",
            )
        if set(ab) != {"A", "B"}:
            missing = "B" if "A" in ab else "A"
            raise ModelFormatError(weights, f"{module} has no lora_{missing} matrix")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ModelFormatError(
                weights,
                f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not make a "
                "product B @ A",
            )
        r = int(_lookup(rank_pattern, module, rank))
        if a.shape[0] != r:
            raise ModelFormatError(
                weights, f"{module}: lora_A has rank {a.shape[0]}, the config says {r}"
            )
        module_alpha = float(_lookup(alpha_pattern, module, alpha))
        scale = module_alpha / (math.sqrt(r) if rslora else r)
        pairs[f"{module}.weight"] = (a, b, scale)
    base = config.get("base_model_name_or_path")
    return LoraAdapter(
        path=directory,
        rank=rank,
        alpha=alpha,
        base_model=base if isinstance(base, str) else None,
        pairs=pairs,
    )


def apply_lora(model: LoadedModel, adapter: LoraAdapter, *, in_place: bool = False) -> LoadedModel:
    """``model`` with ``adapter`` merged into its weights.

    The product is formed in float32 and added to the weight before it is rounded back to the
    model's dtype, once. By default the adapted weights are new tensors and ``model`` is
    unchanged; ``in_place`` writes into ``model``'s own weights instead, which spares a copy
    of every adapted weight (and the time to first touch it: most of a merge's time).

    Raises:
        ModelFormatError: the adapter names a weight the model lacks, its shapes do not fit,
            or it was made for another architecture.
    """
    arch = model.config.architecture
    if adapter.architecture is not None and adapter.architecture != arch:
        raise ModelFormatError(
            adapter.path,
            f"the adapter is for a {adapter.architecture} model, {model.name} is a {arch} model",
        )
    shapes = expected_shapes(model.config)
    weights = dict(model.weights)
    for name, (a, b, scale) in adapter.pairs.items():
        if name not in weights:
            raise ModelFormatError(
                adapter.path, f"the adapter adapts {name}, which {model.name} does not have"
            )
        out, inner = shapes[name]
        if a.shape[1] != inner or b.shape[0] != out:
            raise ModelFormatError(
                adapter.path,
                f"{name}: B @ A would be [{b.shape[0]}, {a.shape[1]}], the weight of "
                f"{model.name} is [{out}, {inner}] (an adapter of another base model?)",
            )
        if adapter.rope_permuted:
            b = _hf_rows(name, b, model.config)
        base = weights[name]
        a32, b32 = a.to(base.device, torch.float32), b.to(base.device, torch.float32)
        if in_place and base.dtype == torch.float32:
            base.addmm_(b32, a32, alpha=scale)
        elif in_place:
            base.copy_(torch.addmm(base.float(), b32, a32, alpha=scale))
        else:
            weights[name] = torch.addmm(base.float(), b32, a32, alpha=scale).to(base.dtype)
    log.info(
        "LoRA adapter merged",
        adapter=str(adapter.path),
        model=model.name,
        weights=len(adapter.pairs),
        rank=adapter.rank,
    )
    return dataclasses.replace(model, weights=weights)


def _hf_rows(name: str, b: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``B`` of the weight ``name`` with Q/K rows back in the Hugging Face order (what
    `inferno_models.gguf_loader` does to the base weights)."""
    if name.endswith("self_attn.q_proj.weight"):
        return unpermute_rope(b, config.num_attention_heads)
    if name.endswith("self_attn.k_proj.weight"):
        return unpermute_rope(b, config.num_key_value_heads)
    return b


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(path, f"unreadable adapter config: {exc}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(path, "the adapter config is not a JSON object")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise UnsupportedModelError(path, f"peft_type {kind!r} is not a LoRA adapter")
    if config.get("use_dora"):
        raise UnsupportedModelError(path, "DoRA adapters are not supported (use_dora)")
    if config.get("bias", "none") != "none":
        raise UnsupportedModelError(path, f"trained biases (bias={config['bias']!r})")
    if config.get("modules_to_save"):
        raise UnsupportedModelError(
            path, f"modules_to_save ({config['modules_to_save']!r}) replace whole modules"
        )
    if config.get("fan_in_fan_out"):
        raise UnsupportedModelError(path, "fan_in_fan_out adapters are for GPT-2-style layers")
    return config


def _number(path: Path, config: dict[str, Any], key: str, *, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFormatError(path, f"{key} must be a number, got {value!r}")
    return float(value)


def _positive(path: Path, config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFormatError(path, f"{key} must be a positive integer, got {value!r}")
    return value


def _pattern(path: Path, config: dict[str, Any], key: str) -> list[tuple[re.Pattern[str], float]]:
    pattern = config.get(key) or {}
    if not isinstance(pattern, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in pattern.values()
    ):
        raise ModelFormatError(path, f"{key} must map module names to numbers")
    # PEFT's rule: a key (a regular expression) applies to a module whose name it matches
    # whole, or whose name ends in "." and a match.
    try:
        return [(re.compile(rf"(.*\.)?(?:{k})"), float(v)) for k, v in pattern.items()]
    except re.error as exc:
        raise ModelFormatError(path, f"{key} holds an invalid pattern: {exc}") from None


def _lookup(pattern: list[tuple[re.Pattern[str], float]], module: str, default: float) -> float:
    for regex, value in pattern:
        if regex.fullmatch(module):
            return value
    return default
