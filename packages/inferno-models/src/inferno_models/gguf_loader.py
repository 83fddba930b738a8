"""Reading Llama-family GGUF files: metadata, config and dequantized weights.

The header is read by `inferno_models.gguf_summary` (checked against the ``gguf`` package's
reader in the tests), tensor data is memory-mapped, and dequantization is
`inferno_models.dequant`, and rope scaling stored as tensors `inferno_models.gguf_rope`.
Every failure surfaces as `ModelFormatError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from inferno_models.config import Architecture, ModelConfig, RopeScaling
from inferno_models.dequant import BLOCK_SIZES, dequantize
from inferno_models.errors import ModelFormatError, UnsupportedModelError
from inferno_models.gguf_rope import (
    DIVISOR_RTOL,
    ROPE_FACTORS_LONG,
    ROPE_FACTORS_SHORT,
    ROPE_FREQS,
    fit_rope_scaling,
    longrope_scaling,
    rope_divisors,
)
from inferno_models.gguf_summary import TensorExtent, scan_gguf
from inferno_models.names import (
    EMBED,
    FINAL_NORM,
    LM_HEAD,
    checkpoint_shapes,
    layer_name,
    split_fused,
)

__all__ = [
    "ARCHITECTURES",
    "ROPE_FREQS",
    "ROPE_PERMUTED",
    "GGUFFile",
    "canonical_name",
    "fit_rope_scaling",
    "permute_rope",
    "rope_divisors",
    "unpermute_rope",
]

#: The ``general.architecture`` values this loader reads.
ARCHITECTURES = ("llama", "qwen2", "qwen3", "smollm3", "phi3")
#: Architectures whose Q/K rows (and biases) llama.cpp's converter permutes for its rotary
#: layout; it rotates the others ("NEOX") in the Hugging Face layout, unpermuted.
ROPE_PERMUTED = frozenset({"llama", "smollm3"})
#: llama.cpp gives SmolLM3 no key for its NoPE layers: every fourth layer, fixed in its code.
_SMOLLM3_NOPE_INTERVAL = 4
_ARCHITECTURE_NAMES: dict[str, Architecture] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "smollm3": "smollm3",
    "phi3": "phi3",
}

#: GGUF per-layer tensor names (after ``blk.{i}.``) -> canonical suffixes.
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
#: Phi-3's fused tensors (`inferno_models.names.FUSED`): llama.cpp's converter keeps them
#: fused, and its ``ffn_up`` is then the gate and up projections together.
_PHI3_LAYER_MAP = {
    **_LAYER_MAP,
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "ffn_up.weight": "mlp.gate_up_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": EMBED,
    "output_norm.weight": FINAL_NORM,
    "output.weight": LM_HEAD,
}
#: Tensors that are rope scaling, not weights: read into the config, never loaded.
_ROPE_TENSORS = frozenset({ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT})

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
        self._by_name = {t.name: t for t in self._extents}
        # Tensors of rope scaling, by GGUF name: not weights, the config is made of them.
        self._rope_tensors: dict[str, _TensorInfo] = {}
        try:
            self._mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelFormatError(self.path, f"cannot map tensor data: {exc}") from None
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
        if self.metadata.get("general.type") == "adapter":
            raise UnsupportedModelError(
                self.path,
                f"this GGUF is an adapter (adapter.type {self.metadata.get('adapter.type')!r}), "
                "not a model: a LoRA adapter is merged into its base model (load_lora and "
                "apply_lora, or inferno serve --lora)",
            )
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(self.path, f"unsupported architecture {arch!r}")
        # Qwen2 always has Q/K/V biases; llama.cpp's other files may carry optional ones.
        qkv_bias = arch == "qwen2" or layer_name(0, "self_attn.q_proj.bias") in self._tensors
        o_bias = layer_name(0, "self_attn.o_proj.bias") in self._tensors

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
        head_dim, context, rotary = self._head_dim_and_context(arch, hidden, heads)
        # llama.cpp writes a window for Phi-3 only, 0 for the models without one.
        window = self.metadata.get(f"{arch}.attention.sliding_window", 0) if arch == "phi3" else 0
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ModelFormatError(self.path, f"invalid {arch}.attention.sliding_window {window!r}")
        theta = float(self.metadata.get(f"{arch}.rope.freq_base", 10000.0))
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
                head_dim=head_dim,
                max_position_embeddings=context,
                sliding_window=window if 0 < window < context else None,
                rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
                rope_theta=theta,
                rope_scaling=self._rope_scaling(arch, rotary, theta),
                partial_rotary_factor=rotary / head_dim,
                tie_word_embeddings=LM_HEAD not in self._tensors,
                bos_token_id=self.metadata.get("tokenizer.ggml.bos_token_id"),
                eos_token_ids=eos_ids,
                architecture=_ARCHITECTURE_NAMES[arch],
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                qk_norm=arch == "qwen3",
                nope_layers=tuple(
                    i
                    for i in range(int(req("block_count")))
                    if arch == "smollm3" and (i + 1) % _SMOLLM3_NOPE_INTERVAL == 0
                ),
            )
        except (ValueError, TypeError) as exc:
            raise ModelFormatError(self.path, f"invalid model metadata: {exc}") from None

    def _head_dim_and_context(self, arch: str, hidden: int, heads: int) -> tuple[int, int, int]:
        """A head's width, the context and the rotary width, from the ``{arch}.*`` keys.

        Raises:
            UnsupportedModelError: the rotary embedding covers part of each head of a model
                other than Phi-3 (Phi-4-mini's turns three quarters).
            ModelFormatError: a value is not a number, or the rotary width is not an even
                number up to the head's.
        """
        try:
            key_length = self.metadata.get(f"{arch}.attention.key_length")
            rope_dims = self.metadata.get(f"{arch}.rope.dimension_count")
            # A Phi-3 file gives a head's width only as hidden / heads, as llama.cpp reads it;
            # its rope.dimension_count is the rotary width, which can be less.
            fallback = hidden // heads if arch == "phi3" else rope_dims
            head_dim = int(key_length or fallback or hidden // heads)
            context = int(self.metadata.get(f"{arch}.context_length", 2048))
            rotary = head_dim if rope_dims is None else int(rope_dims)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(self.path, f"invalid model metadata: {exc}") from None
        if not 2 <= rotary <= head_dim or rotary % 2:
            raise ModelFormatError(
                self.path,
                f"{arch}.rope.dimension_count {rotary} is not an even width up to the head's "
                f"({head_dim})",
            )
        if rotary != head_dim and arch != "phi3":
            raise UnsupportedModelError(
                self.path,
                f"{arch}.rope.dimension_count {rotary} is not the head width {head_dim}: a "
                f"rotary embedding on part of each head (partial_rotary_factor "
                f"{rotary / head_dim:g}) is supported for phi3 files (Phi-4-mini) only",
            )
        return head_dim, context, rotary

    def _rope_scaling(self, arch: str, rotary_dim: int, theta: float) -> RopeScaling | None:
        """Phi-3's longrope from its factor tensors; else from the scaling keys, or else from
        ``rope_freqs.weight`` (when a file has both, they must agree)."""
        longrope = self._longrope(arch, rotary_dim)
        if longrope is not None:
            return longrope
        scaling = self._rope_scaling_keys(arch)
        info = self._rope_tensors.get(ROPE_FREQS)
        divisors = None if info is None else self._rope_vector(info, rotary_dim)
        if divisors is None:
            return scaling
        if scaling is None:
            context = self.metadata.get(f"{arch}.rope.scaling.original_context_length")
            try:
                scaling = fit_rope_scaling(
                    divisors,
                    rotary_dim,
                    theta,
                    original_context=None if context is None else int(context),
                )
            except ValueError as exc:
                raise UnsupportedModelError(
                    self.path, f"{ROPE_FREQS} is not a rope scaling this loader knows: {exc}"
                ) from None
            source = f"the rope scaling fitted to {ROPE_FREQS}"
        else:
            source = "the rope scaling keys"
        expected = rope_divisors(scaling, rotary_dim, theta)
        if not np.allclose(expected, divisors, rtol=DIVISOR_RTOL, atol=0):
            worst = int(np.argmax(np.abs(expected - divisors) / divisors))
            raise ModelFormatError(
                self.path,
                f"{ROPE_FREQS} disagrees with {source}: frequency {worst} is divided by "
                f"{float(divisors[worst]):.6g}, expected {float(expected[worst]):.6g}",
            )
        return scaling

    def _longrope(self, arch: str, rotary_dim: int) -> RopeScaling | None:
        """The longrope scaling of a Phi-3 file with ``rope_factors_long`` and
        ``rope_factors_short`` tensors, or None for a file without them.

        Raises:
            UnsupportedModelError: a file of another architecture has them.
            ModelFormatError: one of the two is missing, a tensor has the wrong shape or a
                non-positive factor, or the file also scales its rope another way.
        """
        long = self._rope_tensors.get(ROPE_FACTORS_LONG)
        short = self._rope_tensors.get(ROPE_FACTORS_SHORT)
        if long is None and short is None:
            return None
        if arch != "phi3":
            raise UnsupportedModelError(
                self.path,
                f"tensors {ROPE_FACTORS_LONG} and {ROPE_FACTORS_SHORT} (longrope) are read "
                f"for phi3 files, not {arch}",
            )
        if long is None or short is None:
            there, missing = (
                (ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG)
                if long is None
                else (ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT)
            )
            raise ModelFormatError(self.path, f"tensor {there} has no {missing} beside it")
        if ROPE_FREQS in self._rope_tensors:
            raise ModelFormatError(
                self.path, f"the file has both longrope factor tensors and {ROPE_FREQS}"
            )
        kind = self.metadata.get(f"{arch}.rope.scaling.type")
        if kind not in (None, "none", "longrope"):
            raise ModelFormatError(
                self.path,
                f"the file has longrope factor tensors and {arch}.rope.scaling.type {kind!r}",
            )
        return longrope_scaling(
            self._rope_vector(long, rotary_dim),
            self._rope_vector(short, rotary_dim),
            self.metadata,
            arch,
            source=str(self.path),
        )

    def _rope_vector(self, info: _TensorInfo, rotary_dim: int) -> npt.NDArray[np.float64]:
        """A rope tensor of one positive value per frequency (divisors, factors)."""
        if info.shape != (rotary_dim // 2,):
            raise ModelFormatError(
                self.path,
                f"tensor {info.name} has shape {list(info.shape)}, expected [{rotary_dim // 2}]",
            )
        values = self._decode(info).double().numpy()
        if not np.all(np.isfinite(values)) or values.min() <= 0:
            raise ModelFormatError(
                self.path, f"tensor {info.name} holds a non-positive or non-finite value"
            )
        return values

    def _rope_scaling_keys(self, arch: str) -> RopeScaling | None:
        kind = self.metadata.get(f"{arch}.rope.scaling.type")
        if kind in (None, "none"):
            return None
        if kind == "longrope":
            raise ModelFormatError(
                self.path,
                f"{arch}.rope.scaling.type is longrope, but the file has no {ROPE_FACTORS_LONG} "
                f"and {ROPE_FACTORS_SHORT} tensors",
            )
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
        infos: dict[str, _TensorInfo] = {}
        for t in self._extents:
            name = canonical_name(t.name, self.architecture)
            if name is None and t.name not in _ROPE_TENSORS:
                continue
            if t.nbytes < 0:
                raise UnsupportedModelError(self.path, f"tensor {t.name} has unknown type {t.kind}")
            info = self._info(t)
            if name is None:
                self._rope_tensors[t.name] = info
            else:
                infos[name] = info
        return infos

    @property
    def file_tensors(self) -> tuple[TensorExtent, ...]:
        """Every tensor of the file under its GGUF name (``blk.0.attn_q.weight``), in file
        order; shapes are row-major (numpy's order, the reverse of GGUF's ``ne``)."""
        return self._extents

    def read_tensor(self, gguf_name: str) -> torch.Tensor:
        """The tensor called ``gguf_name`` in the file, dequantized to float32 in the file's
        own layout (a Llama file's Q/K rows stay permuted; `iter_weights` restores them).

        Raises:
            ModelFormatError: the file has no such tensor, or it cannot be decoded.
            UnsupportedModelError: its type is one this package cannot decode.
        """
        t = self._by_name.get(gguf_name)
        if t is None:
            raise ModelFormatError(self.path, f"no tensor {gguf_name}")
        if t.nbytes < 0:
            raise UnsupportedModelError(self.path, f"tensor {t.name} has unknown type {t.kind}")
        return self._decode(self._info(t))

    def _info(self, t: TensorExtent) -> _TensorInfo:
        return _TensorInfo(t.name, t.kind, t.shape, self._mapped[t.start : t.start + t.nbytes])

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
        ``dtype`` on ``device`` with Q/K rows restored to the Hugging Face layout, and a Phi-3
        file's fused tensors split into their parts.

        Raises:
            ModelFormatError: a tensor is missing, has the wrong shape, or cannot be decoded.
        """
        for name, shape in checkpoint_shapes(config).items():
            info = self._tensors.get(name)
            if info is None:
                raise ModelFormatError(self.path, f"missing tensor for {name}")
            if info.shape != shape:
                raise ModelFormatError(
                    self.path,
                    f"tensor {info.name} has shape {list(info.shape)}, expected {list(shape)}",
                )
            tensor = self._decode(info)
            permuted = config.architecture in ROPE_PERMUTED
            if permuted and name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                tensor = unpermute_rope(tensor, config.num_attention_heads)
            elif permuted and name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                tensor = unpermute_rope(tensor, config.num_key_value_heads)
            yield from split_fused(config, name, tensor.to(device=device, dtype=dtype))
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


def canonical_name(gguf_name: str, architecture: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF model tensor of ``architecture`` (``blk.3.attn_q.weight``
    -> ``model.layers.3.self_attn.q_proj.weight``), or None for a name no model weight has.

    For a Phi-3 file, whose fused tensors keep their fused Hugging Face names
    (``blk.3.attn_qkv.weight`` -> ``model.layers.3.self_attn.qkv_proj.weight``, ``ffn_up``
    -> ``mlp.gate_up_proj``), that is its checkpoint's name, not the canonical one."""
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    layer_map = _PHI3_LAYER_MAP if architecture == "phi3" else _LAYER_MAP
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer_map:
        return layer_name(int(parts[1]), layer_map[parts[2]])
    return None
