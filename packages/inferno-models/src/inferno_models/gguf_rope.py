"""Rope scaling as GGUF files store it in tensors rather than keys.

llama.cpp's converter writes Llama 3.1's scaling as ``rope_freqs.weight``, the divisor of
each rotary frequency (`rope_divisors`, and `fit_rope_scaling` back), and Phi-3's
long-context scaling (LongRoPE) as two tensors of per-frequency factors, the short ones and
the long ones, beside ``{arch}.rope.scaling.*`` keys (`longrope_scaling`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from inferno_models.config import RopeScaling
from inferno_models.errors import ModelFormatError

__all__ = [
    "ROPE_FACTORS_LONG",
    "ROPE_FACTORS_SHORT",
    "ROPE_FREQS",
    "fit_rope_scaling",
    "longrope_scaling",
    "rope_divisors",
]

#: llama.cpp's converter stores Llama 3.1 rope scaling as this tensor of per-frequency
#: divisors (``[head_dim // 2]``) instead of scaling keys.
ROPE_FREQS = "rope_freqs.weight"
#: The per-frequency factors (``[head_dim // 2]``, float32) of Phi-3's long-context rope
#: scaling ("longrope") past the original context, which llama.cpp's converter writes for
#: Phi-3-*-128k and Phi-3.5 ...
ROPE_FACTORS_LONG = "rope_factors_long.weight"
#: ... and below it.
ROPE_FACTORS_SHORT = "rope_factors_short.weight"
#: Relative tolerance when checking divisors read from a file (stored as float32).
DIVISOR_RTOL = 1e-4
# How far a float32 attention factor may be from the default's value and still be it.
_ATTENTION_RTOL = 1e-6


def _base_inverse_frequencies(head_dim: int, theta: float) -> npt.NDArray[np.float64]:
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_divisors(scaling: RopeScaling | None, head_dim: int, theta: float) -> npt.NDArray[Any]:
    """What each rotary frequency is divided by under ``scaling`` (``[head_dim // 2]``,
    float64): the values llama.cpp's converter writes as ``rope_freqs.weight``.

    Raises:
        ValueError: ``scaling`` is longrope, whose divisors depend on the position.
    """
    inv = _base_inverse_frequencies(head_dim, theta)
    if scaling is None:
        return np.ones_like(inv)
    if scaling.type == "longrope":
        raise ValueError("longrope's divisors depend on the position: it has no rope_freqs")
    if scaling.type == "linear":
        return np.full_like(inv, scaling.factor)
    old, low, high = scaling.original_max_position_embeddings, *_band(scaling)
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    medium = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    return np.where(wavelen < high, 1.0, np.where(wavelen > low, scaling.factor, medium))


def _band(scaling: RopeScaling) -> tuple[float, float]:
    """The wavelengths above which frequencies are fully scaled, and below which untouched."""
    old = scaling.original_max_position_embeddings
    return old / scaling.low_freq_factor, old / scaling.high_freq_factor


def fit_rope_scaling(
    divisors: npt.NDArray[Any], head_dim: int, theta: float, *, original_context: int | None
) -> RopeScaling | None:
    """The `RopeScaling` whose `rope_divisors` are ``divisors``, or None when they are all 1.

    All equal: linear scaling. Otherwise llama3: ``factor`` is the largest divisor, and the
    divisors between 1 and ``factor`` fix the band. Only the band's wavelengths matter, so
    ``low_freq_factor`` is taken as 1 (Llama 3.1's value) and the others follow; with fewer
    than two divisors inside the band, ``high_freq_factor`` is Llama 3.1's 4 too, and with
    none, ``original_context`` (else 8192) is kept when it fits the band. The caller checks
    the result against ``divisors``.

    Raises:
        ValueError: the divisors do not have the llama3 shape.
    """
    div = np.asarray(divisors, dtype=np.float64)
    if not np.all(np.isfinite(div)) or div.min() <= 0:
        raise ValueError("divisors must be finite and positive")
    if np.allclose(div, 1.0, rtol=DIVISOR_RTOL, atol=0):
        return None
    factor = float(div.max())
    if np.allclose(div, factor, rtol=DIVISOR_RTOL, atol=0):
        return RopeScaling(type="linear", factor=factor)
    if factor <= 1:
        raise ValueError("llama3 divisors are at least 1")
    inv = _base_inverse_frequencies(head_dim, theta)
    x = inv / (2 * math.pi)  # 1 / wavelength
    tol = DIVISOR_RTOL * factor
    medium = (div > 1 + tol) & (div < factor - tol)
    # Inside the band 1/divisor = (1 - s)/factor + s, with s linear in 1/wavelength.
    s = (1 / div - 1 / factor) / (1 - 1 / factor)
    low_factor, high_factor = 1.0, 4.0
    if medium.sum() >= 2:
        slope, intercept = np.polyfit(x[medium], s[medium], 1)
        if intercept >= 0 or slope <= 0:
            raise ValueError("the divisors inside the band do not grow with the wavelength")
        high_factor = 1 - 1 / intercept
        old = slope * (high_factor - 1)
    elif medium.sum() == 1:
        (i,) = np.flatnonzero(medium)
        old = (s[i] * (high_factor - low_factor) + low_factor) / x[i]
    else:
        # Any context in the gap between the unscaled and the fully scaled wavelengths works.
        unscaled = 2 * math.pi / inv[div <= 1 + tol]
        scaled = 2 * math.pi / inv[div >= factor - tol]
        lowest = high_factor * unscaled.max() if unscaled.size else 1.0
        highest = low_factor * scaled.min()
        old = float(min(max(original_context or 8192, math.floor(lowest) + 1), highest))
    # The divisors went through float32: values that float32 noise moved off a round
    # number are put back on it.
    factor, high_factor, old = _snap(factor), _snap(high_factor), _snap(old)
    # original_max_position_embeddings is an int: rescale the three together (which keeps
    # the band) so that it is one.
    rounded = max(1, round(old))
    k = rounded / old
    return RopeScaling(
        type="llama3",
        factor=factor,
        low_freq_factor=_snap(low_factor * k),
        high_freq_factor=_snap(high_factor * k),
        original_max_position_embeddings=rounded,
    )


def _snap(value: float) -> float:
    """``value`` rounded to 3 decimals when that moves it by at most float32 noise."""
    rounded = round(float(value), 3)
    return rounded if abs(rounded - value) <= 1e-6 * abs(value) else float(value)


def longrope_scaling(
    long: npt.NDArray[Any],
    short: npt.NDArray[Any],
    metadata: dict[str, Any],
    arch: str,
    *,
    source: str,
) -> RopeScaling:
    """Phi-3's longrope scaling from its factor tensors and the ``{arch}.*`` ``metadata``.

    The original context is ``rope.scaling.original_context_length`` (required), ``factor`` is
    ``context_length`` over it, and the attention factor is ``rope.scaling.attn_factor``.
    llama.cpp's converter writes that key even when it is the default
    ``sqrt(1 + ln(factor) / ln(original))``; a value that is the default as float32 holds it
    is taken as the default (None), as the model's config.json had it.

    Raises:
        ModelFormatError: the original context is missing or not a positive integer, or the
            attention factor is not a positive number.
    """
    key = f"{arch}.rope.scaling.original_context_length"
    if key not in metadata:
        raise ModelFormatError(
            source,
            f"missing metadata {key!r}, which the longrope factors ({ROPE_FACTORS_LONG}, "
            f"{ROPE_FACTORS_SHORT}) need",
        )
    try:
        original = int(metadata[key])
        context = int(metadata.get(f"{arch}.context_length", original))
        attention = metadata.get(f"{arch}.rope.scaling.attn_factor")
        attention = None if attention is None else float(attention)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(source, f"invalid model metadata: {exc}") from None
    if original <= 0:
        raise ModelFormatError(source, f"{key} {original} is not a positive integer")
    fields: dict[str, Any] = {
        "type": "longrope",
        "factor": context / original,
        "original_max_position_embeddings": original,
        "short_factor": tuple(float(v) for v in short),
        "long_factor": tuple(float(v) for v in long),
    }
    try:
        default = RopeScaling(**fields).attention_scale
        if attention is not None and not math.isclose(
            attention, default, rel_tol=_ATTENTION_RTOL, abs_tol=0
        ):
            fields["attention_factor"] = attention
        return RopeScaling(**fields)
    except (ValueError, ArithmeticError) as exc:  # a context of 1 has no logarithm
        raise ModelFormatError(source, f"invalid longrope scaling: {exc}") from None
