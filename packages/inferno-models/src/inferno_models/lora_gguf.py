"""LoRA adapters in llama.cpp's GGUF format (what ``llama-server --lora`` and Ollama's
``ADAPTER`` take), read into a `LoraAdapter` that `apply_lora` merges.

llama.cpp's ``convert_lora_to_gguf.py`` writes ``general.type = "adapter"``, ``adapter.type =
"lora"``, ``adapter.lora.alpha`` (float32) and the base model's ``general.architecture``, and
each adapted weight (``blk.N.attn_q.weight``) as two tensors: ``<weight>.lora_a``, ``[r, in]``
(GGUF's ``ne`` is the reverse, ``[in, r]``), and ``<weight>.lora_b``, ``[out, r]``. Its Llama
converter permutes Q/K rows for llama.cpp's rotary layout, and a Llama adapter's ``lora_b``
with them (``lora_a`` is untouched); Qwen2 and Qwen3 are not permuted. llama.cpp scales each
product by ``alpha / r``, ``r`` from the pair's own shape, and by 1 when alpha is 0 or absent
(``src/llama-adapter.cpp``, ``build_lora_mm``).

The header and the tensors are read by `GGUFFile` (so every type it decodes may hold the
matrices: F32, F16, BF16, Q8_0 and the rest) and the names mapped as for a model. Adapters of
the token embeddings or the output head, norm weights (which ``mergekit-extract-lora`` adds and
llama.cpp skips) and activated LoRAs (which act only after their invocation tokens) are refused
with `UnsupportedModelError`, malformed files with `ModelFormatError`; both name the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from inferno_models.errors import ModelFormatError, UnsupportedModelError
from inferno_models.gguf_loader import ARCHITECTURES, ROPE_PERMUTED, GGUFFile, canonical_name
from inferno_models.gguf_summary import TensorExtent
from inferno_models.lora import _TARGETS, LoraAdapter
from inferno_models.names import EMBED, FUSED, LM_HEAD

__all__ = ["is_gguf", "read_gguf_lora"]

_PARTS = ("lora_a", "lora_b")
_HF_PREFIX = "https://huggingface.co/"


def is_gguf(path: Path) -> bool:
    """Whether the file ``path`` is named ``*.gguf`` or starts with GGUF's magic."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def read_gguf_lora(path: Path) -> LoraAdapter:
    """Read the GGUF LoRA adapter file at ``path``.

    Raises:
        ModelFormatError: a malformed file: truncated, a pair with a half missing or ranks
            that differ, a bad alpha.
        UnsupportedModelError: not a LoRA adapter, or one this package cannot merge.
    """
    file = GGUFFile(path)
    _check_kind(file)
    alpha = _alpha(file)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for base, ab in _group(file).items():
        name = _target(path, base, file.architecture)
        missing = [part for part in _PARTS if part not in ab]
        if missing:
            raise ModelFormatError(path, f"{base} has no {missing[0]} tensor (a pair needs both)")
        a, b = ab["lora_a"], ab["lora_b"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise ModelFormatError(
                path,
                f"{base}: lora_a {list(a.shape)} and lora_b {list(b.shape)} do not make a "
                "product B @ A (lora_a is [rank, in], lora_b [out, rank])",
            )
        rank = a.shape[0]
        scale = alpha / rank if alpha else 1.0
        pairs[name] = (file.read_tensor(a.name), file.read_tensor(b.name), scale)
    if not pairs:
        raise ModelFormatError(path, "the adapter holds no LoRA matrices")
    return LoraAdapter(
        path=path,
        rank=max(a.shape[0] for a, _, _ in pairs.values()),
        alpha=alpha,
        base_model=_base_model(file.metadata),
        pairs=dict(sorted(pairs.items())),
        architecture=file.architecture,
        # llama.cpp's converter permutes a Llama adapter's Q/K lora_b rows with the weights.
        rope_permuted=file.architecture in ROPE_PERMUTED,
    )


def _check_kind(file: GGUFFile) -> None:
    kind = file.get("general.type")
    arch = file.architecture
    if kind != "adapter":
        if arch == "controlvector":
            what = "a control vector (general.architecture 'controlvector')"
        elif kind in (None, "model"):
            what = f"a model (general.type {kind!r}, an adapter's is 'adapter')"
        else:
            what = f"not an adapter (general.type {kind!r})"
        raise UnsupportedModelError(file.path, f"this GGUF is {what}, not a LoRA adapter")
    adapter = file.get("adapter.type")
    if adapter != "lora":
        raise UnsupportedModelError(
            file.path, f"adapter.type is {adapter!r}; only LoRA adapters ('lora') can be merged"
        )
    if file.get("adapter.alora.invocation_tokens") is not None:
        raise UnsupportedModelError(
            file.path,
            "an activated LoRA (adapter.alora.invocation_tokens) acts only after its "
            "invocation tokens, which a merge into the weights cannot do",
        )
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            file.path,
            f"the adapter is for architecture {arch!r}; adapters of "
            f"{', '.join(ARCHITECTURES)} models can be merged",
        )


def _alpha(file: GGUFFile) -> float:
    # llama.cpp reads a missing alpha as 0, which scales every product by 1.
    value = file.get("adapter.lora.alpha", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFormatError(file.path, f"adapter.lora.alpha must be a number, got {value!r}")
    return float(value)


def _group(file: GGUFFile) -> dict[str, dict[str, TensorExtent]]:
    """The file's tensors by the weight they adapt: ``{"blk.0.attn_q.weight": {"lora_a": ...,
    "lora_b": ...}}``."""
    parts: dict[str, dict[str, TensorExtent]] = {}
    for t in file.file_tensors:
        base, _, part = t.name.rpartition(".")
        if part in _PARTS:
            parts.setdefault(base, {})[part] = t
        elif t.name.endswith("_norm.weight"):
            raise UnsupportedModelError(
                file.path,
                f"tensor {t.name} replaces a norm weight (mergekit-extract-lora adds these, "
                "llama.cpp skips them); only LoRA matrices can be merged",
            )
        else:
            raise UnsupportedModelError(
                file.path,
                f"tensor {t.name} is not a LoRA matrix (llama.cpp names them <weight>.lora_a "
                "and <weight>.lora_b)",
            )
    return parts


def _target(path: Path, base: str, architecture: str) -> str:
    """The canonical name of the weight ``base`` adapts, which must be a projection's."""
    name = canonical_name(base, architecture)
    only = f"only the attention and MLP projections ({', '.join(_TARGETS)}) can be merged"
    if name == EMBED:
        raise UnsupportedModelError(
            path, f"the adapter adapts the token embeddings ({base}); {only}"
        )
    if name == LM_HEAD:
        raise UnsupportedModelError(path, f"the adapter adapts the output head ({base}); {only}")
    if name is not None and name.endswith(tuple(f".{fused}" for fused in FUSED)):
        raise UnsupportedModelError(
            path, f"the adapter adapts {base}, a Phi-3 fused projection, which is not supported"
        )
    if name is None or not name.endswith(tuple(f".{t}.weight" for t in _TARGETS)):
        raise UnsupportedModelError(path, f"the adapter adapts {base}; {only}")
    return name


def _base_model(metadata: dict[str, Any]) -> str | None:
    """The base model the converter recorded from the adapter's model card: its Hugging Face
    repository id when it has one, else its name."""
    url = metadata.get("general.base_model.0.repo_url")
    if isinstance(url, str) and url.startswith(_HF_PREFIX):
        return url.removeprefix(_HF_PREFIX).strip("/") or None
    name = metadata.get("general.base_model.0.name")
    return name if isinstance(name, str) else None
