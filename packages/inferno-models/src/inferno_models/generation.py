"""`GenerationDefaults`: the sampling settings a model recommends for requests that leave them
out.

They come from the model itself: ``generation_config.json`` in a Hugging Face directory, the
``general.sampling.*`` keys of a GGUF file, and, for the default model, its model card. A
serving layer fills the fields a request does not set from them, then from its own defaults
(OpenAI's: temperature 1, top_p 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from inferno_models.errors import ModelFormatError

__all__ = ["DEFAULT_MODEL_GENERATION", "GenerationDefaults"]


def _number(key: str, value: Any) -> float:
    # bool is an int in Python, and a JSON ``true`` is no temperature.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _integer(key: str, value: Any) -> int:
    number = _number(key, value)
    if not number.is_integer():
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    return int(number)


#: Each setting's bounds: (lowest, whether the lowest itself is allowed, highest).
_BOUNDS: dict[str, tuple[float, bool, float]] = {
    "temperature": (0, True, 2),
    "top_p": (0, False, 1),
    "top_k": (0, True, math.inf),
    "min_p": (0, True, 1),
    "repetition_penalty": (0, False, 2),
    "max_tokens": (1, True, math.inf),
}


def _check_bounds(key: str, value: float) -> None:
    low, low_ok, high = _BOUNDS[key]
    if (value > low or (low_ok and value == low)) and value <= high:
        return
    if high == math.inf:
        raise ValueError(f"{key} must be at least {low:g}, got {value!r}")
    raise ValueError(f"{key} must be in {'[' if low_ok else '('}{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """Sampling settings, each None when the source does not set it.

    ``temperature`` 0 is greedy; ``top_k`` 0 and ``min_p`` 0 are off (set, so they override a
    model's value; a source's ``top_k`` below 0 reads as 0); ``max_tokens`` is the number of
    new tokens (Hugging Face's ``max_new_tokens``).
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value is not None:
                _check_bounds(key, value)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GenerationDefaults:
        """Settings under this class's field names (a config file's or a command line's).

        Raises:
            ValueError: an unknown key, or a value of the wrong type or out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown sampling default {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            parsed[key] = (
                _integer(key, value) if key in ("top_k", "max_tokens") else (_number(key, value))
            )
        return cls(**parsed)

    @classmethod
    def from_hf_generation_config(cls, path: Path) -> GenerationDefaults:
        """The settings of a ``generation_config.json`` (none when the file is absent).

        An explicit ``"do_sample": false`` means greedy, as in transformers, whatever the
        temperature says.

        Raises:
            ModelFormatError: the file is not a JSON object, or a setting is invalid.
        """
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelFormatError(path, f"unreadable JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelFormatError(path, "expected a JSON object")
        raw = {
            "temperature": data.get("temperature"),
            "top_p": data.get("top_p"),
            "top_k": data.get("top_k"),
            "min_p": data.get("min_p"),
            "repetition_penalty": data.get("repetition_penalty"),
            "max_tokens": data.get("max_new_tokens"),
        }
        if data.get("do_sample") is False:
            raw.update(temperature=0.0, top_p=None, top_k=None, min_p=None)
        return cls._from_source(path, raw)

    @classmethod
    def from_gguf_metadata(cls, path: Path, metadata: Mapping[str, Any]) -> GenerationDefaults:
        """The ``general.sampling.*`` settings of a GGUF file's metadata.

        Raises:
            ModelFormatError: a setting is invalid.
        """
        raw = {
            "temperature": metadata.get("general.sampling.temp"),
            "top_p": metadata.get("general.sampling.top_p"),
            "top_k": metadata.get("general.sampling.top_k"),
            "min_p": metadata.get("general.sampling.min_p"),
            "repetition_penalty": metadata.get("general.sampling.penalty_repeat"),
        }
        return cls._from_source(path, raw)

    @classmethod
    def _from_source(cls, path: Path, raw: Mapping[str, Any]) -> GenerationDefaults:
        values = dict(raw)
        # Some sources spell "off" as -1.
        top_k = values.get("top_k")
        if isinstance(top_k, int | float) and not isinstance(top_k, bool) and top_k < 0:
            values["top_k"] = 0
        try:
            return cls.from_mapping(values)
        except ValueError as exc:
            raise ModelFormatError(path, f"invalid sampling setting: {exc}") from None

    def merged(self, override: GenerationDefaults) -> GenerationDefaults:
        """These settings with every field that ``override`` sets replaced by its value."""
        changes: dict[str, Any] = override.to_dict()
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float | int]:
        """The fields that are set, JSON-ready."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def __bool__(self) -> bool:
        return bool(self.to_dict())


#: What the default model's card recommends (SmolLM2-135M-Instruct samples with
#: ``temperature=0.2, top_p=0.9``); its GGUF file carries no sampling keys of its own.
DEFAULT_MODEL_GENERATION = GenerationDefaults(temperature=0.2, top_p=0.9)
