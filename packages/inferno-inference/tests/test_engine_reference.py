"""Greedy generations of the engine equal transformers' greedy generate token for token."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from inferno_inference.engine import LLMEngine
from inferno_inference.tiny import greedy_tokens, reference_greedy_tokens, tiny_llm_engine
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config

NEW_TOKENS = 64


def _prompts(vocab: int) -> list[list[int]]:
    # Varied lengths (1 .. 70, some crossing the llama3 original context of 64) and contents.
    lengths = [1, 3, 7, 12, 16, 23, 31, 40, 57, 70]
    return [[(i * 31 + k * k * 7 + 5) % vocab for k in range(n)] for i, n in enumerate(lengths)]


def _hf_greedy(
    config: ModelConfig, weights: dict[str, torch.Tensor], prompts: list[list[int]]
) -> list[list[int]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf: Any = LlamaForCausalLM(LlamaConfig(**config.to_hf_dict()))
    hf.eval()
    hf.load_state_dict(weights, strict=False)
    return reference_greedy_tokens(hf, prompts, NEW_TOKENS)


def _run(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    return greedy_tokens(engine, prompts, NEW_TOKENS)


@pytest.fixture(scope="module")
def reference() -> tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]:
    config = tiny_config()
    weights = random_weights(config, seed=11)
    prompts = _prompts(config.vocab_size)
    return config, weights, prompts, _hf_greedy(config, weights, prompts)


Ref = tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]


def test_greedy_alone_matches_transformers(reference: Ref) -> None:
    config, weights, prompts, expected = reference
    for p, want in zip(prompts, expected, strict=True):
        engine = tiny_llm_engine(config=config, weights=weights)
        assert _run(engine, [p]) == [want]


def test_greedy_batched_matches_transformers(reference: Ref) -> None:
    config, weights, prompts, expected = reference
    engine = tiny_llm_engine(
        config=config, weights=weights, max_num_seqs=16, max_num_batched_tokens=48
    )
    assert _run(engine, prompts) == expected
    assert engine.stats().kv_blocks_used == 0


def test_greedy_under_preemption_matches_transformers(reference: Ref) -> None:
    config, weights, prompts, expected = reference
    # 64 blocks of 4 tokens cannot hold ten sequences of up to 134 tokens: preemption happens.
    engine = tiny_llm_engine(
        config=config, weights=weights, kv_cache_bytes=128 * 1024, max_num_batched_tokens=32
    )
    assert _run(engine, prompts) == expected
    stats = engine.stats()
    assert stats.preemptions_total > 0
    assert stats.kv_blocks_used == 0


def test_prefix_cache_hits_do_not_change_tokens(reference: Ref) -> None:
    config, weights, prompts, expected = reference
    engine = tiny_llm_engine(config=config, weights=weights)
    assert _run(engine, [prompts[-1]]) == [expected[-1]]
    assert _run(engine, [prompts[-1]]) == [expected[-1]]
    assert engine.stats().prefix_cache_hits >= 64


def test_prompts_sharing_a_prefix_in_one_step_match_transformers(reference: Ref) -> None:
    config, weights, _, _ = reference
    common = [(5 * k + 1) % config.vocab_size for k in range(21)]
    prompts = [common + [(11 * i + k) % config.vocab_size for k in range(3 + i)] for i in range(4)]
    expected = _hf_greedy(config, weights, prompts)
    engine = tiny_llm_engine(config=config, weights=weights, max_num_batched_tokens=256)
    assert _run(engine, prompts) == expected
    # All four were admitted in the first step; the last three read the first one's blocks.
    assert engine.stats().prefix_cache_hits == 3 * 20
