"""Builders of tiny random Llama models for tests, in memory and on disk."""

from __future__ import annotations

import torch

from inferno_models.config import ModelConfig, RopeScaling
from inferno_models.names import expected_shapes

__all__ = ["random_weights", "tiny_config"]


def tiny_config(
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    llama3_rope: bool = True,
) -> ModelConfig:
    """A small Llama config with GQA and (by default) llama3 rope scaling."""
    scaling = (
        RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=64)
        if llama3_rope
        else None
    )
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=scaling,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_ids=(2,),
    )


def random_weights(
    config: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights under the canonical names, scaled so activations stay well-conditioned."""
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        weights[name] = t.to(dtype)
    return weights
