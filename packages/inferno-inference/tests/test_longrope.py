"""LongRoPE (Phi-3's long-context scaling): the rope tables, and greedy decoding against
transformers' Phi3 on a tiny random model whose original context is 32 positions."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from inferno_inference.rope import inverse_frequencies, rope_tables
from inferno_inference.tiny import greedy_tokens, tiny_llm_engine
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_models import ModelConfig, RopeScaling
from inferno_models.names import fuse
from inferno_models.testing import random_weights, tiny_config

ORIGINAL = 32


def _longrope_config(
    attention_factor: float | None = None, partial_rotary_factor: float = 1.0
) -> ModelConfig:
    base = tiny_config(
        architecture="phi3",
        max_position_embeddings=128,
        partial_rotary_factor=partial_rotary_factor,
    )
    pairs = base.rotary_dim // 2
    gen = torch.Generator().manual_seed(4)
    short = (1 + 0.5 * torch.rand(pairs, generator=gen)).tolist()
    long = (1 + 3 * torch.rand(pairs, generator=gen)).tolist()
    scaling = RopeScaling(
        type="longrope",
        factor=128 / ORIGINAL,
        original_max_position_embeddings=ORIGINAL,
        short_factor=tuple(short),
        long_factor=tuple(long),
        attention_factor=attention_factor,
    )
    return base.model_copy(update={"rope_scaling": scaling})


def _hf_phi3(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Any:
    """transformers' Phi3 with the same longrope settings, built from its own config fields."""
    from transformers import Phi3Config, Phi3ForCausalLM

    scaling = config.rope_scaling
    assert scaling is not None
    assert scaling.short_factor
    assert scaling.long_factor
    rope: dict[str, Any] = {
        "rope_type": "longrope",
        "rope_theta": config.rope_theta,
        "short_factor": list(scaling.short_factor),
        "long_factor": list(scaling.long_factor),
        "original_max_position_embeddings": ORIGINAL,
    }
    if scaling.attention_factor is not None:
        rope["attention_factor"] = scaling.attention_factor
    hf_config = Phi3Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        original_max_position_embeddings=ORIGINAL,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=config.tie_word_embeddings,
        partial_rotary_factor=config.partial_rotary_factor,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    hf: Any = Phi3ForCausalLM(hf_config)
    hf.eval()
    missing, unexpected = hf.load_state_dict(fuse(config, weights), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    return hf


@pytest.mark.parametrize("attention_factor", [None, 1.3])
def test_rope_tables_rotate_by_short_factors_then_long_ones(
    attention_factor: float | None,
) -> None:
    config = _longrope_config(attention_factor)
    scaling = config.rope_scaling
    assert scaling is not None
    assert scaling.short_factor
    assert scaling.long_factor
    dim = config.head_dim
    base = config.rope_theta ** (torch.arange(0, dim, 2).double() / dim)
    scale = attention_factor or math.sqrt(1 + math.log(128 / ORIGINAL) / math.log(ORIGINAL))
    assert scaling.attention_scale == pytest.approx(scale)
    cos, sin = rope_tables(config, 64, dtype=torch.float32, device=torch.device("cpu"))
    for position in (0, 5, ORIGINAL - 1, ORIGINAL, 63):
        factors = scaling.short_factor if position < ORIGINAL else scaling.long_factor
        angles = position / (torch.tensor(factors).double() * base)
        want_cos = torch.cat([angles.cos(), angles.cos()]) * scale
        want_sin = torch.cat([-angles.sin(), angles.sin()]) * scale
        assert torch.allclose(cos[position].double(), want_cos, atol=1e-5), position
        assert torch.allclose(sin[position].double(), want_sin, atol=1e-5), position
    assert torch.allclose(
        inverse_frequencies(config, long=True).double(),
        1 / (torch.tensor(scaling.long_factor).double() * base),
    )
    # A table that ends within the original context holds short-factor rows only.
    short_cos, _ = rope_tables(config, ORIGINAL, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(short_cos, cos[:ORIGINAL])


def test_the_rotary_embedding_equals_transformers_phi3() -> None:
    config = _longrope_config()
    hf = _hf_phi3(config, random_weights(config, seed=1))
    rotary = hf.model.rotary_emb
    x = torch.zeros(1, 1, config.head_dim)
    dim = config.head_dim
    for length, position in ((20, 19), (ORIGINAL + 8, ORIGINAL + 7)):
        # transformers picks the factors for a whole call by its length.
        hf_cos, hf_sin = rotary(x, torch.arange(length)[None])
        cos, sin = rope_tables(config, 128, dtype=torch.float32, device=torch.device("cpu"))
        assert torch.allclose(cos[position], hf_cos[0, -1], atol=1e-5)
        signed = torch.cat([-hf_sin[0, -1, : dim // 2], hf_sin[0, -1, dim // 2 :]])
        assert torch.allclose(sin[position], signed, atol=1e-5)


def _hf_stepwise(hf: Any, ids: list[int], start: int) -> list[torch.Tensor]:
    """transformers' log-probabilities for each of ``ids[start:]``, from a prefill of the
    first ``start`` tokens and then one token at a time through its cache."""
    steps = []
    with torch.inference_mode():
        out = hf(torch.tensor([ids[:start]]), use_cache=True)
        steps.append(torch.log_softmax(out.logits[0, -1].float(), dim=-1))
        for token in ids[start:-1]:
            out = hf(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            steps.append(torch.log_softmax(out.logits[0, -1].float(), dim=-1))
    return steps


PROMPTS = [[(11 * i + 5 * k) % 300 + 3 for k in range(6 + 7 * i)] for i in range(4)]


@pytest.mark.parametrize("rotary", [1.0, 0.75], ids=["whole-heads", "phi4-mini-three-quarters"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_decoding_past_the_original_context_equals_transformers_stepwise(
    native: bool, rotary: float
) -> None:
    """Prompts within the original 32 positions, answers running past them. transformers'
    Phi3, stepping through its cache, rotates the prompt by the short factors and each later
    position by the long ones, as the engine's tables do: every greedy token is its argmax
    (up to a near-tie) and every token's log-probability agrees, decoded and prefilled.

    (transformers' ``generate`` differs past the original context: Phi3's
    ``prepare_inputs_for_generation`` drops the cache when a sequence crosses it, so that
    every position is recomputed with the long factors.)"""
    config = _longrope_config(partial_rotary_factor=rotary)
    weights = random_weights(config, seed=1)
    hf = _hf_phi3(config, weights)
    assert hf.model.rotary_emb.inv_freq.shape == (config.rotary_dim // 2,)
    engine = tiny_llm_engine(config=config, weights=weights, cpu_native_decode=native)
    ours = greedy_tokens(engine, PROMPTS, 40)
    for prompt, answer in zip(PROMPTS, ours, strict=True):
        assert len(prompt) + len(answer) > ORIGINAL + 8
        steps = _hf_stepwise(hf, prompt + answer, len(prompt))
        for j, (token, step) in enumerate(zip(answer, steps, strict=True)):
            assert step[token] >= step.max() - 1e-4, j
        scored = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        engine.add_request(GenerationRequest("score", tuple(prompt + answer), scored))
        records = None
        while engine.has_work():
            for out in engine.step():
                records = out.prompt_logprobs or records
        assert records is not None
        got = torch.tensor([r.logprob for r in records[len(prompt) :] if r is not None])
        want = torch.stack([step[t] for step, t in zip(steps, answer, strict=True)])
        assert torch.allclose(got, want, atol=1e-4)
    assert engine.stats().kv_blocks_used == 0
