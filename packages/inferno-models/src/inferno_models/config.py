"""Validated configuration of a Llama-family model.

One `ModelConfig` describes Llama 2, Llama 3 (with its "llama3" rope scaling), SmolLM, Qwen2 and
Qwen2.5 (Llama with biases on Q, K and V), Qwen3 (Llama with an RMSNorm on each query and key
head), SmolLM3 (Llama whose every fourth layer has no rotary embedding, "NoPE"), Phi-3 (Llama
whose checkpoints fuse Q, K and V, and the gate and up projections; Phi-4-mini is one whose
rotary embedding turns part of each head), Mistral (Llama with a sliding window) and other
models of the same shape. It is built from a Hugging Face ``config.json`` or from GGUF metadata,
and written back as ``config.json`` by the converter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferno_models.errors import ModelFormatError, UnsupportedModelError

__all__ = ["Architecture", "ModelConfig", "RopeScaling"]

#: The context of a config.json that gives none.
_DEFAULT_CONTEXT = 2048

#: The model families a `ModelConfig` describes.
Architecture = Literal["llama", "qwen2", "qwen3", "smollm3", "phi3"]


class RopeScaling(BaseModel):
    """Rotary-embedding frequency scaling.

    ``type="llama3"`` is Llama 3.1's wavelength-dependent scaling; ``"linear"`` divides positions
    by ``factor``; ``"longrope"`` is Phi-3's long-context scaling (LongRoPE, ``"su"`` in older
    configs): each frequency divided by its own factor, ``short_factor`` for the positions
    below ``original_max_position_embeddings`` and ``long_factor`` past them, and cos/sin
    multiplied by ``attention_factor``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["llama3", "linear", "longrope"] = Field(description="Scaling scheme.")
    factor: float = Field(
        gt=0, description="Context-extension factor (longrope: context / original context)."
    )
    low_freq_factor: float = Field(default=1.0, gt=0, description="llama3: low-frequency bound.")
    high_freq_factor: float = Field(default=4.0, gt=0, description="llama3: high-frequency bound.")
    original_max_position_embeddings: int = Field(
        default=8192, gt=0, description="Context length the model was pre-trained with."
    )
    short_factor: tuple[float, ...] | None = Field(
        default=None, description="longrope: per-frequency divisors below the original context."
    )
    long_factor: tuple[float, ...] | None = Field(
        default=None, description="longrope: per-frequency divisors past the original context."
    )
    attention_factor: float | None = Field(
        default=None,
        gt=0,
        description="longrope: cos/sin multiplier; None: sqrt(1 + ln(factor) / ln(original)).",
    )

    @model_validator(mode="after")
    def _check_longrope(self) -> RopeScaling:
        if self.type == "longrope":
            if self.short_factor is None or self.long_factor is None:
                raise ValueError("longrope needs short_factor and long_factor")
            if len(self.short_factor) != len(self.long_factor):
                raise ValueError("longrope's short_factor and long_factor differ in length")
            if min(self.short_factor + self.long_factor) <= 0:
                raise ValueError("longrope's factors must be positive")
        elif self.short_factor is not None or self.long_factor is not None:
            raise ValueError(f"short_factor and long_factor are longrope's, not {self.type}'s")
        return self

    @property
    def attention_scale(self) -> float:
        """What longrope multiplies cos and sin by (1 for the other schemes)."""
        if self.type != "longrope":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        if self.factor <= 1:
            return 1.0
        return math.sqrt(
            1 + math.log(self.factor) / math.log(self.original_max_position_embeddings)
        )


class ModelConfig(BaseModel):
    """Shape and numerics of a Llama-family decoder-only transformer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: Architecture = Field(
        default="llama",
        description=(
            "Model family: Llama, Qwen2 (Llama with biases on Q, K and V), Qwen3 (Llama with "
            "RMSNorm on every query and key head), SmolLM3 (Llama with layers that skip the "
            "rotary embedding) or Phi-3 (Llama whose files fuse Q, K and V into one tensor, "
            "and the gate and up projections into another; loaded, they are split)."
        ),
    )
    vocab_size: int = Field(gt=0, description="Rows of the embedding matrix.")
    hidden_size: int = Field(gt=0, description="Width of the residual stream.")
    intermediate_size: int = Field(gt=0, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(gt=0, description="Number of decoder blocks.")
    num_attention_heads: int = Field(gt=0, description="Query heads per layer.")
    num_key_value_heads: int = Field(gt=0, description="Key/value heads per layer (GQA).")
    head_dim: int = Field(gt=0, description="Width of one attention head.")
    max_position_embeddings: int = Field(gt=0, description="Context length in tokens.")
    rms_norm_eps: float = Field(gt=0, lt=1, description="Epsilon of RMSNorm.")
    rope_theta: float = Field(gt=0, description="Base of the rotary frequencies.")
    rope_scaling: RopeScaling | None = Field(default=None, description="Rotary scaling, if any.")
    tie_word_embeddings: bool = Field(description="The LM head reuses the embedding matrix.")
    qkv_bias: bool = Field(default=False, description="Q, K and V projections have biases.")
    o_bias: bool = Field(default=False, description="The attention output has a bias.")
    qk_norm: bool = Field(
        default=False,
        description="Each query and key head is RMS-normalized (one weight per head width) "
        "before the rotary embedding.",
    )
    partial_rotary_factor: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="The share of each query and key head the rotary embedding turns: its "
        "first `rotary_dim` dimensions, the rest passed through (Phi-4-mini's 0.75).",
    )
    nope_layers: tuple[int, ...] = Field(
        default=(),
        description="Layers (by index) whose queries and keys are not rotated (SmolLM3's NoPE "
        "layers): their attention sees no positions.",
    )
    sliding_window: int | None = Field(
        default=None,
        gt=0,
        description="Sliding-window attention in every layer (Mistral 7B v0.1, "
        "Phi-3-mini-4k): a token attends to the latest this many positions, its own "
        "included. None: each token attends to all before it.",
    )
    bos_token_id: int | None = Field(default=None, ge=0, description="Beginning-of-sequence id.")
    eos_token_ids: tuple[int, ...] = Field(default=(), description="Ids that end a generation.")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        for name, tid in (
            ("bos_token_id", self.bos_token_id),
            *(("eos_token_ids", t) for t in self.eos_token_ids),
        ):
            if tid is not None and tid >= self.vocab_size:
                raise ValueError(f"{name} {tid} is outside the vocabulary ({self.vocab_size})")
        # The combinations each family's config.json can express.
        if self.architecture == "qwen2" and (not self.qkv_bias or self.o_bias):
            raise ValueError("qwen2 has biases on Q, K and V and none on the attention output")
        if self.architecture in ("llama", "qwen3") and self.qkv_bias != self.o_bias:
            raise ValueError(
                f"{self.architecture}'s attention_bias covers Q, K, V and the output together"
            )
        if self.architecture == "phi3" and (self.qkv_bias or self.o_bias):
            raise ValueError("phi3 has no attention biases")
        if self.sliding_window is not None and self.architecture == "llama" and self.o_bias:
            # A Llama with a window is written as a Mistral, and Mistral has no biases.
            raise ValueError("a sliding-window llama (mistral) has no attention biases")
        scaling = self.rope_scaling
        if self.architecture == "phi3" and scaling is not None and scaling.type != "longrope":
            # transformers' Phi3 knows no other scaling than longrope.
            raise ValueError("phi3 has no llama3 or linear rope scaling (rope_scaling)")
        if self.partial_rotary_factor != 1 and self.architecture != "phi3":
            # Of the families here, only transformers' Phi3 turns part of a head.
            raise ValueError("a partial rotary embedding (partial_rotary_factor) is Phi-3's")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ValueError(
                f"partial_rotary_factor {self.partial_rotary_factor} turns {self.rotary_dim} of "
                f"{self.head_dim} dimensions: it must be a positive even number"
            )
        factors = None if scaling is None else scaling.short_factor
        if factors is not None and 2 * len(factors) != self.rotary_dim:
            raise ValueError(
                f"longrope has {len(factors)} factors for a rotary width of {self.rotary_dim} "
                f"({self.rotary_dim // 2} frequencies)"
            )
        if self.qk_norm != (self.architecture == "qwen3"):
            raise ValueError("query/key norms (qk_norm) are Qwen3's, and every Qwen3 has them")
        if self.nope_layers and self.architecture != "smollm3":
            raise ValueError("layers without rotary embeddings (nope_layers) are SmolLM3's")
        if any(not 0 <= i < self.num_hidden_layers for i in self.nope_layers):
            raise ValueError(f"nope_layers {list(self.nope_layers)} name a layer that is not there")
        if list(self.nope_layers) != sorted(set(self.nope_layers)):
            raise ValueError("nope_layers must be increasing layer indices")
        return self

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each query and key head that the rotary embedding turns (the first
        ones; all of them unless `partial_rotary_factor` is below 1)."""
        # transformers truncates head_dim * factor; the epsilon keeps a factor read as
        # rotary / head_dim (from GGUF) from landing just below its integer.
        return int(self.head_dim * self.partial_rotary_factor + 1e-6)

    @property
    def num_queries_per_kv(self) -> int:
        """Query heads that share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (the tied head counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        per_layer += (q + 2 * kv if self.qkv_bias else 0) + (h if self.o_bias else 0)
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_hidden_layers * per_layer + h + head

    # -- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Build from the contents of a Hugging Face ``config.json``.

        Raises:
            ModelFormatError: the architecture is not Llama-family or a field is invalid.
        """
        archs = data.get("architectures") or []
        model_type = data.get("model_type", "llama")
        qwen2 = model_type == "qwen2" or "Qwen2ForCausalLM" in archs
        qwen3 = model_type == "qwen3" or "Qwen3ForCausalLM" in archs
        smollm3 = model_type == "smollm3" or "SmolLM3ForCausalLM" in archs
        phi3 = model_type == "phi3" or "Phi3ForCausalLM" in archs
        llama = model_type in ("llama", "mistral") or "LlamaForCausalLM" in archs
        if not (qwen2 or qwen3 or smollm3 or phi3 or llama):
            raise UnsupportedModelError(source, f"unsupported architecture {model_type!r} {archs}")
        matches: dict[Architecture, bool] = {
            "qwen2": qwen2,
            "qwen3": qwen3,
            "smollm3": smollm3,
            "phi3": phi3,
            "llama": True,
        }
        family = next(name for name, hit in matches.items() if hit)
        if data.get("mlp_bias"):
            raise UnsupportedModelError(source, "MLP biases (mlp_bias) are not supported")
        # transformers 5 writes the rope settings as rope_parameters, older ones as
        # rope_scaling (and rope_theta, partial_rotary_factor beside it).
        raw_scaling = data.get("rope_scaling") or data.get("rope_parameters")
        if raw_scaling is not None and not isinstance(raw_scaling, dict):
            raise ModelFormatError(source, f"rope_scaling is not an object: {raw_scaling!r}")
        rope_type = (raw_scaling or {}).get("rope_type") or (raw_scaling or {}).get("type")
        if rope_type not in (None, "default", "llama3", "linear", "longrope", "su"):
            raise UnsupportedModelError(
                source,
                f"rope_scaling of type {rope_type!r} is not supported; llama3, linear and "
                "longrope (su) are",
            )
        rotary = data.get("partial_rotary_factor", (raw_scaling or {}).get("partial_rotary_factor"))
        if rotary is None:
            rotary = 1.0
        if not phi3 and rotary != 1:
            raise UnsupportedModelError(
                source,
                f"partial_rotary_factor {rotary} (a rotary embedding on part of each head) is "
                "supported for Phi-3-family models (Phi-4-mini) only",
            )
        context = data.get("max_position_embeddings", _DEFAULT_CONTEXT)
        try:
            window = _sliding_window(
                data, model_type, qwen2=qwen2 or qwen3, smollm3=smollm3, phi3=phi3
            )
        except (ValueError, TypeError) as exc:
            raise ModelFormatError(source, f"invalid config: {exc}") from None
        if isinstance(window, tuple):
            # Some layers slide and others do not: within the window every layer attends as
            # a full one does, so such a model gets the window as its context rather than
            # wrong attention past it.
            context, window = min(context, window[0]), None
        if window is not None and window >= context:
            window = None
        # Phi-3's projections have no biases, whatever the config says.
        attention_bias = not phi3 and bool(data.get("attention_bias", False))
        try:
            heads = int(data["num_attention_heads"])
            hidden = int(data["hidden_size"])
            eos = data.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
            scaling: RopeScaling | None = None
            if raw_scaling is not None and rope_type in ("longrope", "su"):
                scaling = _longrope(raw_scaling, data, phi3=phi3, source=source)
            elif raw_scaling is not None and rope_type not in ("default", None):
                scaling = RopeScaling(**{**raw_scaling, "type": rope_type})
            nope: tuple[int, ...] = ()
            if smollm3:
                uses = _rotating_layers(data)
                layers = int(data["num_hidden_layers"])
                if len(uses) != layers:
                    raise ValueError(f"no_rope_layers has {len(uses)} entries for {layers} layers")
                nope = tuple(i for i, rotates in enumerate(uses) if not rotates)
            rope_theta = data.get("rope_theta")
            if rope_theta is None:
                rope_theta = (data.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            return cls(
                vocab_size=data["vocab_size"],
                hidden_size=hidden,
                intermediate_size=data["intermediate_size"],
                num_hidden_layers=data["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=data.get("num_key_value_heads") or heads,
                head_dim=data.get("head_dim") or hidden // heads,
                max_position_embeddings=context,
                rms_norm_eps=data.get("rms_norm_eps", 1e-6),
                rope_theta=rope_theta,
                rope_scaling=scaling,
                tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
                bos_token_id=data.get("bos_token_id"),
                eos_token_ids=eos_ids,
                architecture=family,
                qkv_bias=qwen2 or attention_bias,
                o_bias=not qwen2 and attention_bias,
                qk_norm=qwen3,
                nope_layers=nope,
                sliding_window=window,
                partial_rotary_factor=rotary,
            )
        except KeyError as exc:
            raise ModelFormatError(source, f"missing field {exc.args[0]!r}") from None
        except (ValidationError, ValueError, TypeError) as exc:
            raise ModelFormatError(source, f"invalid config: {exc}") from None

    @classmethod
    def from_hf_file(cls, path: str | Path) -> ModelConfig:
        """Read a Hugging Face ``config.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(path, f"cannot read config: {exc}") from None
        if not isinstance(data, dict):
            raise ModelFormatError(path, "config is not a JSON object")
        return cls.from_hf_dict(data, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` form, loadable by ``transformers``."""
        eos: int | list[int] | None
        eos = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        if not self.eos_token_ids:
            eos = None
        scaling = None if self.rope_scaling is None else _hf_rope_scaling(self.rope_scaling)
        arch = self.architecture
        names = {
            "llama": "LlamaForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM",
            "smollm3": "SmolLM3ForCausalLM",
            "phi3": "Phi3ForCausalLM",
        }
        family: dict[str, Any] = {"architectures": [names[arch]], "model_type": arch}
        window = self.sliding_window
        if arch == "llama" and window is not None:
            # transformers' Llama has no window; its Mistral is a Llama with one.
            family = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
        if arch in ("phi3", "llama"):
            family["sliding_window"] = window
        else:
            family["use_sliding_window"] = window is not None
            if window is not None:
                family["sliding_window"] = window
                family["max_window_layers"] = 0
                family["layer_types"] = ["sliding_attention"] * self.num_hidden_layers
        if arch == "phi3":
            # Its config class defaults to a padding id of its own vocabulary (32000).
            family["pad_token_id"] = None
            family["partial_rotary_factor"] = self.partial_rotary_factor
        if arch not in ("qwen2", "phi3"):
            family["attention_bias"] = self.o_bias
            family["mlp_bias"] = False
        if self.rope_scaling is not None and self.rope_scaling.type == "longrope":
            # Where Phi-3's configs keep it, and the only place transformers' Phi3 reads it
            # (its Llama reads the copy inside rope_scaling).
            original = self.rope_scaling.original_max_position_embeddings
            family["original_max_position_embeddings"] = original
        if arch == "smollm3":
            nope = set(self.nope_layers)
            family["no_rope_layers"] = [int(i not in nope) for i in range(self.num_hidden_layers)]
            # Its config class defaults to a padding id of its own vocabulary (128004).
            family["pad_token_id"] = None
        return {
            **family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }


def _sliding_window(
    data: dict[str, Any], model_type: str, *, qwen2: bool, smollm3: bool, phi3: bool
) -> int | tuple[int] | None:
    """The sliding window of the config ``data`` as transformers applies it: the window when
    every layer slides, ``(window,)`` when only some do, ``None`` when none does.

    Mistral and Phi-3 slide in every layer when the config names a window (their config
    classes have no switch). Qwen2 and Qwen3 need ``use_sliding_window``, and then slide from
    layer ``max_window_layers`` on; SmolLM3 then slides in its layers without rotary
    embeddings. An explicit ``layer_types`` list decides for those three.
    """
    window = data.get("sliding_window")
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        return None
    layers = data.get("num_hidden_layers")
    if model_type == "mistral" or phi3:
        return window
    if not ((qwen2 or smollm3) and data.get("use_sliding_window")):
        return None
    types = data.get("layer_types")
    if isinstance(types, list) and types:
        sliding = [t == "sliding_attention" for t in types]
    elif smollm3:
        sliding = [not rotates for rotates in _rotating_layers(data)]
    else:
        first = int(data.get("max_window_layers", 28))
        sliding = [i >= first for i in range(int(layers or 0))]
    if all(sliding):
        return window
    return (window,) if any(sliding) else None


def _rotating_layers(data: dict[str, Any]) -> list[int]:
    """SmolLM3's ``no_rope_layers`` of the config ``data``: 1 marks a layer that rotates;
    without the list, every fourth layer (``no_rope_layer_interval``) does not."""
    uses = data.get("no_rope_layers")
    if uses is None:
        interval = int(data.get("no_rope_layer_interval", 4))
        uses = [int((i + 1) % interval != 0) for i in range(int(data.get("num_hidden_layers", 0)))]
    if not isinstance(uses, list):
        raise ValueError(f"no_rope_layers is not a list: {uses!r}")
    return uses


def _longrope(raw: dict[str, Any], data: dict[str, Any], *, phi3: bool, source: str) -> RopeScaling:
    """The longrope (or "su") scaling of ``raw``, the rope_scaling of the config ``data``.

    Phi-3's configs give ``original_max_position_embeddings`` beside the rest, and
    transformers' Phi3 reads it only there; its Llama reads it only inside rope_scaling. Each
    family's own place comes first, the other is the fallback. Without a ``factor`` of its
    own, the factor is the context over the original one, the context as the config writes
    it (before a window on some of the layers caps it), as transformers computes it.

    Raises:
        ModelFormatError: neither place gives the original context.
    """
    inner = raw.get("original_max_position_embeddings")
    outer = data.get("original_max_position_embeddings")
    first, second = (outer, inner) if phi3 else (inner, outer)
    original = first if first is not None else second
    if original is None:
        raise ModelFormatError(
            source,
            "longrope rope_scaling needs original_max_position_embeddings (the context the "
            "model was pre-trained with), beside it or inside it",
        )
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise ModelFormatError(
            source, f"original_max_position_embeddings {original!r} is not a positive integer"
        )
    factor = raw.get("factor")
    if factor is None:
        factor = data.get("max_position_embeddings", _DEFAULT_CONTEXT) / original
    return RopeScaling(
        **{
            **raw,
            "type": "longrope",
            "factor": factor,
            "original_max_position_embeddings": original,
        }
    )


def _hf_rope_scaling(scaling: RopeScaling) -> dict[str, Any]:
    """``scaling`` as a config.json's rope_scaling, with the keys transformers' validation of
    its type knows (it warns about others)."""
    # longrope's factor is written too: without one transformers derives it from the
    # context, which a window on some of the layers may have shortened here.
    out: dict[str, Any] = {
        "type": scaling.type,
        "rope_type": scaling.type,
        "factor": scaling.factor,
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
    }
    if scaling.type == "longrope":
        out["short_factor"] = list(scaling.short_factor or ())
        out["long_factor"] = list(scaling.long_factor or ())
        if scaling.attention_factor is not None:
            out["attention_factor"] = scaling.attention_factor
    elif scaling.type == "llama3":
        out["low_freq_factor"] = scaling.low_freq_factor
        out["high_freq_factor"] = scaling.high_freq_factor
    return out
