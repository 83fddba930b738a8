"""Rotary position embeddings, with Llama 3, linear and LongRoPE frequency scaling."""

from __future__ import annotations

import math

import torch
from inferno_models.config import ModelConfig

__all__ = ["apply_rope", "inverse_frequencies", "rope_tables", "rotary_layout"]


def inverse_frequencies(config: ModelConfig, *, long: bool = False) -> torch.Tensor:
    """Per-pair rotation frequencies (fp32, ``[rotary_dim // 2]``) after any rope scaling
    (longrope: its short factors, or with ``long`` its long ones)."""
    dim = config.rotary_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
    if scaling.type == "longrope":
        factors = scaling.long_factor if long else scaling.short_factor
        assert factors is not None
        return inv / torch.tensor(factors, dtype=torch.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_tables(
    config: ModelConfig, max_len: int, *, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and signed ``sin`` tables ``[max_len, head_dim]``, computed in fp32 then cast.

    The first half of the ``sin`` table is negated so that `apply_rope` can rotate with a
    plain roll instead of negating half of every vector.

    With longrope, the positions below the original context rotate by the short factors and
    those past it by the long ones, whatever else shares a step. transformers chooses per
    forward call instead (long for every position once the call reaches past the original
    context): the same for every sequence that stays within it, and for decoding past it; a
    prompt longer than the original context is where the two differ, its first positions
    rotated by the short factors here. A rule by position keeps a request's tokens
    independent of how its prompt is chunked and of what else is in the batch.

    With a partial rotary embedding, the pairs past ``rotary_dim // 2`` turn by nothing (cos
    1, sin 0, unscaled): the heads' dimensions are laid out by `rotary_layout` so that the
    turned ones are those pairs' complements.
    """
    inv = inverse_frequencies(config)
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv)
    scaling = config.rope_scaling
    scale = 1.0
    if scaling is not None and scaling.type == "longrope":
        start = scaling.original_max_position_embeddings
        if max_len > start:
            freqs[start:] = torch.outer(positions[start:], inverse_frequencies(config, long=True))
        scale = scaling.attention_scale
    half_cos, half_sin = freqs.cos() * scale, freqs.sin() * scale
    still = config.head_dim // 2 - inv.shape[0]
    if still:
        half_cos = torch.cat((half_cos, torch.ones(max_len, still)), dim=-1)
        half_sin = torch.cat((half_sin, torch.zeros(max_len, still)), dim=-1)
    cos = torch.cat((half_cos, half_cos), dim=-1)
    sin = torch.cat((-half_sin, half_sin), dim=-1)
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def rotary_layout(config: ModelConfig) -> torch.Tensor | None:
    """The order this engine keeps each query and key head's dimensions in, as indices into
    the checkpoint's order; ``None`` when the rotary embedding turns the whole head.

    The checkpoint's head turns its first ``r = rotary_dim`` dimensions, pairing ``i`` with
    ``i + r/2``, and passes the rest through. Reordered as [first rotary half, first half of
    the rest, second rotary half, second half of the rest], every pair of the whole-head
    layout (``i`` with ``i + head_dim/2``) is either a rotary pair or two passed-through
    dimensions, which `rope_tables` turns by nothing: every kernel rotates as for a whole
    head. Queries and keys are reordered alike, so their dot products are unchanged.
    """
    hd, r = config.head_dim, config.rotary_dim
    if r == hd:
        return None
    rest = (hd - r) // 2
    dims = torch.arange(hd)
    return torch.cat((dims[: r // 2], dims[r : r + rest], dims[r // 2 : r], dims[r + rest :]))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[tokens, heads, head_dim]``) by per-token ``cos``/``signed_sin``
    (``[tokens, 1, head_dim]``, from `rope_tables`), pairing dimension ``i`` with
    ``i + head_dim/2`` (the Hugging Face layout)."""
    rolled = torch.roll(x, shifts=x.shape[-1] // 2, dims=-1)
    return x * cos + rolled * signed_sin
