"""Rotary position embeddings, with Llama 3 and linear frequency scaling."""

from __future__ import annotations

import math

import torch
from inferno_models.config import ModelConfig

__all__ = ["apply_rope", "inverse_frequencies", "rope_tables"]


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair rotation frequencies (fp32, ``[head_dim // 2]``) after any rope scaling."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
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
    """
    inv = inverse_frequencies(config)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : inv.shape[0]] *= -1
    return emb.cos().to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[tokens, heads, head_dim]``) by per-token ``cos``/``signed_sin``
    (``[tokens, 1, head_dim]``, from `rope_tables`), pairing dimension ``i`` with
    ``i + head_dim/2`` (the Hugging Face layout)."""
    rolled = torch.roll(x, shifts=x.shape[-1] // 2, dims=-1)
    return x * cos + rolled * signed_sin
