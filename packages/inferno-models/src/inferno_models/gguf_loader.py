"""Reading Llama-family GGUF files: metadata, config and dequantized weights.

The header is read by `inferno_models.gguf_summary` (checked against the ``gguf`` package's
reader in the tests), tensor data is memory-mapped, and dequantization is
`inferno_models.dequant`. Every failure surfaces as `ModelFormatError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from inferno_models.config import ModelConfig, RopeScaling
from inferno_models.dequant import BLOCK_SIZES, dequantize
from inferno_models.errors import ModelFormatError, UnsupportedModelError
from inferno_models.gguf_summary import scan_gguf
from inferno_models.names import EMBED, FINAL_NORM, LM_HEAD, expected_shapes, layer_name

__all__ = ["GGUFFile", "unpermute_rope"]

#: GGUF per-layer tensor names (after ``blk.{i}.``) -> canonical suffixes.
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": EMBED,
    "output_norm.weight": FINAL_NORM,
    "output.weight": LM_HEAD,
}
#: Tensors that carry no weights a Llama forward pass uses.
_IGNORED = {"rope_freqs.weight"}

_PLAIN_DTYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def unpermute_rope(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo the row permutation GGUF converters apply to Q/K projections.

    llama.cpp rotates adjacent pairs of each head, so its converter interleaves the two halves of
    every head's rows; the Hugging Face layout keeps the halves apart ("rotate_half").
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def permute_rope(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The converters' permutation (inverse of `unpermute_rope`), used to write GGUF files."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    name: str
    kind: str
    shape: tuple[int, ...]  # row-major (outermost first)
    data: npt.NDArray[Any]


class GGUFFile:
    """An open GGUF file: metadata, Llama config, tokenizer fields and canonical tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        summary = scan_gguf(self.path, keep_arrays=True)
        summary.check_complete(self.path, self.path.stat().st_size)
        self.metadata: dict[str, Any] = summary.metadata
        self._extents = summary.tensors
        self._tensors = self._index_tensors()

    # -- metadata ------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        """``general.architecture``."""
        return str(self.metadata.get("general.architecture", "unknown"))

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, or ``default``."""
        return self.metadata.get(key, default)

    def config(self) -> ModelConfig:
        """The model's `ModelConfig`, from ``{arch}.*`` metadata.

        Raises:
            UnsupportedModelError: the architecture is not Llama-family.
            ModelFormatError: a required key is missing or a value is invalid.
        """
        arch = self.architecture
        if arch != "llama":
            raise UnsupportedModelError(self.path, f"unsupported architecture {arch!r}")

        def req(key: str) -> Any:
            full = f"{arch}.{key}"
            if full not in self.metadata:
                raise ModelFormatError(self.path, f"missing metadata {full!r}")
            return self.metadata[full]

        heads = int(req("attention.head_count"))
        hidden = int(req("embedding_length"))
        vocab = self.metadata.get(f"{arch}.vocab_size")
        if vocab is None:
            tokens = self.metadata.get("tokenizer.ggml.tokens")
            vocab = len(tokens) if tokens is not None else self._tensor_rows(EMBED)
        head_dim = self.metadata.get(f"{arch}.attention.key_length") or self.metadata.get(
            f"{arch}.rope.dimension_count", hidden // heads
        )
        eos = self.metadata.get("tokenizer.ggml.eos_token_id")
        extra_eos = self.metadata.get("tokenizer.ggml.eot_token_id")
        eos_ids = tuple(dict.fromkeys(int(t) for t in (eos, extra_eos) if t is not None))
        try:
            return ModelConfig(
                vocab_size=int(vocab),
                hidden_size=hidden,
                intermediate_size=int(req("feed_forward_length")),
                num_hidden_layers=int(req("block_count")),
                num_attention_heads=heads,
                num_key_value_heads=int(
                    self.metadata.get(f"{arch}.attention.head_count_kv", heads)
                ),
                head_dim=int(head_dim),
                max_position_embeddings=int(self.metadata.get(f"{arch}.context_length", 2048)),
                rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
                rope_theta=float(self.metadata.get(f"{arch}.rope.freq_base", 10000.0)),
                rope_scaling=self._rope_scaling(arch),
                tie_word_embeddings=LM_HEAD not in self._tensors,
                bos_token_id=self.metadata.get("tokenizer.ggml.bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (ValueError, TypeError) as exc:
            raise ModelFormatError(self.path, f"invalid model metadata: {exc}") from None

    def _rope_scaling(self, arch: str) -> RopeScaling | None:
        kind = self.metadata.get(f"{arch}.rope.scaling.type")
        if kind in (None, "none"):
            return None
        if kind not in ("linear", "llama3"):
            raise UnsupportedModelError(self.path, f"unsupported rope scaling {kind!r}")
        fields: dict[str, Any] = {
            "type": kind,
            "factor": self.metadata.get(f"{arch}.rope.scaling.factor", 1.0),
        }
        optional = {
            "original_max_position_embeddings": "rope.scaling.original_context_length",
            "low_freq_factor": "rope.scaling.low_freq_factor",
            "high_freq_factor": "rope.scaling.high_freq_factor",
        }
        for name, key in optional.items():
            if f"{arch}.{key}" in self.metadata:
                fields[name] = self.metadata[f"{arch}.{key}"]
        return RopeScaling(**fields)

    # -- tensors -------------------------------------------------------------------------------

    def _index_tensors(self) -> dict[str, _TensorInfo]:
        try:
            mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelFormatError(self.path, f"cannot map tensor data: {exc}") from None
        infos: dict[str, _TensorInfo] = {}
        for t in self._extents:
            name = _canonical_name(t.name)
            if name is None:
                continue
            if t.nbytes < 0:
                raise UnsupportedModelError(self.path, f"tensor {t.name} has unknown type {t.kind}")
            infos[name] = _TensorInfo(t.name, t.kind, t.shape, mapped[t.start : t.start + t.nbytes])
        return infos

    def _tensor_rows(self, name: str) -> int:
        if name not in self._tensors:
            raise ModelFormatError(self.path, f"missing tensor for {name}")
        return self._tensors[name].shape[0]

    def quantization(self) -> str:
        """The most common tensor type among 2-D weights, e.g. ``"Q4_1"``."""
        kinds = [t.kind for t in self._tensors.values() if len(t.shape) == 2]
        return max(set(kinds), key=kinds.count) if kinds else "unknown"

    def iter_weights(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(canonical_name, tensor)`` for every weight the model needs, dequantized to
        ``dtype`` on ``device`` with Q/K rows restored to the Hugging Face layout.

        Raises:
            ModelFormatError: a tensor is missing, has the wrong shape, or cannot be decoded.
        """
        for name, shape in expected_shapes(config).items():
            info = self._tensors.get(name)
            if info is None:
                raise ModelFormatError(self.path, f"missing tensor for {name}")
            if info.shape != shape:
                raise ModelFormatError(
                    self.path,
                    f"tensor {info.name} has shape {list(info.shape)}, expected {list(shape)}",
                )
            tensor = self._decode(info)
            if name.endswith("self_attn.q_proj.weight"):
                tensor = unpermute_rope(tensor, config.num_attention_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                tensor = unpermute_rope(tensor, config.num_key_value_heads)
            yield name, tensor.to(device=device, dtype=dtype)
            if progress is not None:
                progress(info.data.nbytes)

    def total_tensor_bytes(self) -> int:
        """Bytes of tensor data in the file (for progress reporting)."""
        return sum(int(t.data.nbytes) for t in self._tensors.values())

    def _decode(self, info: _TensorInfo) -> torch.Tensor:
        try:
            if info.kind in BLOCK_SIZES:
                array = dequantize(np.asarray(info.data, dtype=np.uint8), info.kind, info.shape)
                return torch.from_numpy(array)
            if info.kind in _PLAIN_DTYPES:
                array = np.asarray(info.data).view(_PLAIN_DTYPES[info.kind]).reshape(info.shape)
                return torch.from_numpy(array.astype(np.float32, copy=True))
            if info.kind == "BF16":
                raw = np.ascontiguousarray(info.data).view(np.int16).reshape(info.shape)
                return torch.from_numpy(raw.copy()).view(torch.bfloat16).to(torch.float32)
        except ValueError as exc:
            raise ModelFormatError(self.path, f"tensor {info.name}: {exc}") from None
        raise UnsupportedModelError(
            self.path, f"tensor {info.name} has unsupported type {info.kind}"
        )


def _canonical_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    if gguf_name in _IGNORED:
        return None
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_MAP:
        return layer_name(int(parts[1]), _LAYER_MAP[parts[2]])
    return None
