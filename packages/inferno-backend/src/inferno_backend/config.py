"""Configuration of the daemon: defaults < TOML file < ``INFERNO_*`` environment < CLI flags.

Every field is validated by pydantic; a bad value raises `ConfigError` whose message names the
field and where the value came from (``port (from INFERNO_PORT): ...``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from inferno_models.chat import RESERVED_NAMES
from inferno_models.generation import GenerationDefaults
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

__all__ = ["ENV_PREFIX", "TEMPLATE_RESERVED", "ConfigError", "ServeConfig", "load_config"]

ENV_PREFIX = "INFERNO_"


#: Chat template variables the daemon sets itself, which no configured or requested
#: variable may replace.
TEMPLATE_RESERVED = RESERVED_NAMES | {"tools"}


class ConfigError(ValueError):
    """The configuration is invalid; the message names each offending field and its source."""


class ServeConfig(BaseModel):
    """Everything ``inferno serve`` needs to know. Field names are also the TOML keys and, upper
    cased behind ``INFERNO_``, the environment variables (lists there are comma-separated)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(default="default", min_length=1, description="Model name or path to load.")
    served_model_name: str | None = Field(
        default=None, min_length=1, description="Name clients use; defaults to ``model``."
    )
    lora: str | None = Field(
        default=None,
        min_length=1,
        description="Path of a LoRA adapter merged into the model at load: a PEFT directory "
        "(adapter_config.json, adapter_model.safetensors) or a llama.cpp GGUF adapter file.",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port; 0 picks a free one.")
    device: str = Field(default="cpu", min_length=1, description="torch device of the model.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Compute dtype of the weights."
    )
    weight_quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8: per-channel int8 weights for decode steps (CPU only; faster "
        "decoding, output close to but not identical with unquantized weights).",
    )
    speculative_tokens: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Prompt-lookup speculation: up to this many draft tokens per decode step, "
        "copied from earlier text of the same request and verified in one forward pass; "
        "outputs are plain decoding's (in bf16 up to kernel rounding), and text that repeats "
        "its prompt (summaries, quotes, code "
        "edits) decodes faster on a CPU. 0 turns it off.",
    )
    native_decode: bool = Field(
        default=True,
        description="CPU float32/bfloat16: decode steps of up to 64 sequences in the engine's "
        "C kernels (compiled on first use with the system C compiler; PyTorch where none).",
    )
    kernel_backend: Literal["auto", "torch", "triton"] = Field(
        default="auto",
        description="CUDA: 'triton' runs decode attention, RoPE with the KV writes, add+RMSNorm "
        "and SiLU*up in Triton kernels; 'torch' PyTorch ops only; 'auto' Triton when its "
        "kernels pass a self-check at startup.",
    )
    max_num_seqs: int = Field(default=64, ge=1, le=4096, description="Concurrent sequences.")
    max_queued_requests: int = Field(
        default=512,
        ge=0,
        le=1_000_000,
        description="Generation requests per model that may wait beyond max_num_seqs; "
        "one more is refused at once with 503 (code server_overloaded) and Retry-After, "
        "which clients and the gateway retry, instead of waiting without bound.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length; defaults to the model's."
    )
    kv_cache_bytes: int = Field(
        default=256 * 2**20, ge=2**20, description="Bytes of KV cache the engine may use."
    )
    memory_limit_bytes: int = Field(
        default=2**30, ge=2**20, description="Budget of the memory pool (alerts and health)."
    )
    model_sampling_defaults: bool = Field(
        default=True,
        description="Fill the sampling fields a request leaves out (temperature, top_p, top_k, "
        "min_p, repetition_penalty, max_tokens) with what the model recommends: its "
        "generation_config.json, its GGUF general.sampling.* keys, or for the default model "
        "its card (temperature 0.2, top_p 0.9). False: OpenAI's defaults (temperature 1).",
    )
    sampling_defaults: dict[str, float] = Field(
        default_factory=dict,
        description="Sampling defaults of this daemon, over the model's: a table, or "
        "'key=value' pairs separated by commas (keys as in model_sampling_defaults).",
    )
    reasoning_parser: Literal["auto", "think", "none"] = Field(
        default="auto",
        description="Split a reasoning model's thinking (between <think> and </think>) from its "
        "answer: reasoning_content in chat, a reasoning item in responses, thinking in Ollama's "
        "API. 'auto': for models whose chat template writes </think>; 'think': always; "
        "'none': never (the tags stay in the answer).",
    )
    default_chat_template_kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Chat template variables every request gets unless it sets them itself "
        '(chat_template_kwargs), e.g. {"enable_thinking": false} to serve a Qwen3 without '
        "thinking: a table, or a JSON object.",
    )
    warmup: bool = Field(default=True, description="Run one forward pass before turning ready.")
    api_keys: tuple[str, ...] = Field(
        default=(), description="Accepted Bearer keys; empty means no authentication."
    )
    admin_key: str | None = Field(
        default=None, min_length=1, description="Bearer key of /v1/admin/*; unset disables admin."
    )
    responses_kept: int = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="Responses API: how many finished responses the daemon keeps in memory "
        "(least recently used dropped first) for previous_response_id and GET "
        "/v1/responses/{id}; 0 keeps none.",
    )
    max_body_bytes: int = Field(
        default=2**20, ge=1024, le=2**30, description="Largest request body accepted."
    )
    rate_limit_rpm: float = Field(
        default=0.0, ge=0, description="Requests per minute per API key (or client); 0 is off."
    )
    rate_limit_burst: int = Field(default=10, ge=1, description="Requests allowed in a burst.")
    cors_origins: tuple[str, ...] = Field(
        default=(), description="Origins allowed by CORS; ``*`` allows any; empty disables CORS."
    )
    discovery: str = Field(
        default="memory://", description="Discovery backend: memory:// or etcd://HOST:PORT."
    )
    discovery_ttl: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="Seconds of the discovery lease: a daemon that dies without deregistering "
        "leaves the registry within this time (etcd rounds it up to whole seconds). Load "
        "signals are republished every third of it.",
    )
    service_name: str = Field(default="inferno", min_length=1, description="Discovery name.")
    advertise_host: str | None = Field(
        default=None, description="Host others reach this daemon at; defaults to ``host``."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, le=3600, description="Seconds to let in-flight requests finish."
    )
    log_format: Literal["json", "console"] = Field(default="json", description="Log renderer.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )

    @field_validator("default_chat_template_kwargs", mode="before")
    @classmethod
    def _parse_template_kwargs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None

    @field_validator("default_chat_template_kwargs")
    @classmethod
    def _check_template_kwargs(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        clash = sorted(TEMPLATE_RESERVED.intersection(value))
        if clash:
            raise ValueError(f"{', '.join(clash)}: set by the daemon, not a template variable")
        return value

    @field_validator("sampling_defaults", mode="before")
    @classmethod
    def _parse_sampling_defaults(cls, value: Any) -> Any:
        return _pairs(value)

    @field_validator("sampling_defaults")
    @classmethod
    def _check_sampling_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        GenerationDefaults.from_mapping(value)  # raises ValueError naming the bad key
        return value

    @property
    def daemon_sampling_defaults(self) -> GenerationDefaults:
        """``sampling_defaults`` as settings (validated when the config was built)."""
        return GenerationDefaults.from_mapping(self.sampling_defaults)

    @field_validator("discovery")
    @classmethod
    def _check_discovery(cls, value: str) -> str:
        if value != "memory://" and not value.startswith("etcd://"):
            raise ValueError("must be memory:// or etcd://HOST:PORT")
        return value

    @property
    def public_model_name(self) -> str:
        """The name of the startup model as clients see it."""
        return self.served_model_name or self.model


def _pairs(value: Any) -> Any:
    """``"a=1,b=2"`` or ``["a=1", "b=2"]`` as ``{"a": 1.0, "b": 2.0}``; anything else as is."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        return value
    pairs: dict[str, Any] = {}
    for item in value:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        try:
            pairs[key.strip()] = float(raw)
        except ValueError:
            raise ValueError(f"{key.strip()}: not a number: {raw.strip()!r}") from None
    return pairs


def _merged_sampling_defaults(layers: Sequence[tuple[Any, str]]) -> Any:
    """``sampling_defaults`` of every layer merged key by key (a flag adds to a file's table
    instead of replacing it), each layer checked so that an error names where it came from.
    A layer that is not a table is returned as it is, for validation to name the problem."""
    merged: dict[str, Any] = {}
    for layer, origin in layers:
        if layer is None:
            continue
        try:
            parsed = _pairs(layer)
            if not isinstance(parsed, dict):
                return parsed
            GenerationDefaults.from_mapping(parsed)
        except ValueError as exc:
            raise ConfigError(
                f"invalid configuration: sampling_defaults (from {origin}): {exc}"
            ) from None
        merged.update(parsed)
    return merged


def _env_values(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, field in ServeConfig.model_fields.items():
        key = ENV_PREFIX + name.upper()
        if key not in env:
            continue
        raw = env[key]
        annotation = str(field.annotation)
        values[name] = (
            tuple(p.strip() for p in raw.split(",") if p.strip()) if "tuple" in annotation else raw
        )
        sources[name] = key
    return values, sources


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeConfig:
    """Merge the layers into one validated `ServeConfig`.

    Args:
        path: a TOML file; its keys are the field names (a ``[serve]`` table is also accepted).
        env: the environment to read ``INFERNO_*`` from (``os.environ`` when None).
        overrides: values from CLI flags; ``None`` values are ignored.

    Raises:
        ConfigError: unreadable file, unknown key, or a value out of range.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
        data = data.get("serve", data) if isinstance(data.get("serve"), dict) else data
        file_values = data
        values.update(data)
        sources.update(dict.fromkeys(data, str(path)))
    env_values, env_sources = _env_values(os.environ if env is None else env)
    values.update(env_values)
    sources.update(env_sources)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            sources[key] = "command line"
    if "sampling_defaults" in values:
        key = "sampling_defaults"
        values[key] = _merged_sampling_defaults(
            [
                (file_values.get(key), str(path)),
                (env_values.get(key), ENV_PREFIX + key.upper()),
                ((overrides or {}).get(key), "command line"),
            ]
        )
    try:
        return ServeConfig.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "config"
            origin = sources.get(str(err["loc"][0]) if err["loc"] else "", "")
            where = f" (from {origin})" if origin else ""
            problems.append(f"{field}{where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
