"""Llama's variants match transformers: logits, and greedy tokens on every CPU path of the
engine. Attention biases (Qwen2: on Q, K and V; Llama with ``attention_bias``: on the output
too), Qwen3's per-head query/key norms with heads wider than ``hidden / heads``, SmolLM3's
layers without rotary embeddings, Phi-4-mini's rotary embedding on part of each head, and
sliding-window attention (Mistral, Phi-3, Qwen2) with
a window far shorter than the prompts and generations, so that chunks, decodes and prefix
hits all attend across its edge."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from inferno_inference.kv_cache import KVCache
from inferno_inference.native import NativeDecoder
from inferno_inference.tiny import (
    greedy_tokens,
    prefill_metadata,
    reference_greedy_tokens,
    tiny_llm_engine,
)
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config, transformers_model

NEW_TOKENS = 32


def _qwen2() -> ModelConfig:
    return tiny_config(architecture="qwen2", llama3_rope=False, tie_word_embeddings=True)


def _llama_with_bias() -> ModelConfig:
    return tiny_config().model_copy(update={"qkv_bias": True, "o_bias": True})


def _qwen3() -> ModelConfig:
    return tiny_config(architecture="qwen3", head_dim=32, llama3_rope=False)


def _smollm3() -> ModelConfig:
    return tiny_config(architecture="smollm3", num_hidden_layers=4)


def _mistral() -> ModelConfig:
    return tiny_config(sliding_window=8)


def _phi3_window() -> ModelConfig:
    return tiny_config(architecture="phi3", sliding_window=13)


def _qwen2_window() -> ModelConfig:
    return _qwen2().model_copy(update={"sliding_window": 24})


def _phi4_mini() -> ModelConfig:
    # Phi-4-mini's rotary share: three quarters of each head turned (its LongRoPE over them
    # is in test_longrope, which decodes past the original context as transformers does).
    return tiny_config(architecture="phi3", partial_rotary_factor=0.75, tie_word_embeddings=True)


def _phi3_half_rotary() -> ModelConfig:
    return tiny_config(architecture="phi3", partial_rotary_factor=0.5)


CONFIGS = {
    "qwen2": _qwen2,
    "llama-attention-bias": _llama_with_bias,
    "qwen3": _qwen3,
    "smollm3": _smollm3,
    "mistral-window-8": _mistral,
    "phi3-window-13": _phi3_window,
    "qwen2-window-24": _qwen2_window,
    "phi4-mini-rotary-0.75": _phi4_mini,
    "phi3-rotary-0.5": _phi3_half_rotary,
}


def _hf_model(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Any:
    hf = transformers_model(config, weights)
    # The biases, norms and unrotated layers are real in the reference, so a model that
    # skipped them would fail.
    layer = hf.model.layers[0].self_attn
    q_proj = layer.q_proj if hasattr(layer, "q_proj") else layer.qkv_proj  # Phi-3 fuses them
    assert (q_proj.bias is not None) == config.qkv_bias
    assert (layer.o_proj.bias is not None) == config.o_bias
    assert hasattr(layer, "q_norm") == config.qk_norm
    rotated = [getattr(layer.self_attn, "use_rope", True) for layer in hf.model.layers]
    assert [i for i, r in enumerate(rotated) if not r] == list(config.nope_layers)
    assert hf.config.sliding_window == config.sliding_window
    assert hf.model.rotary_emb.inv_freq.shape == (config.rotary_dim // 2,)
    if config.sliding_window is not None:
        assert set(getattr(hf.config, "layer_types", None) or ["sliding_attention"]) == {
            "sliding_attention"
        }
    return hf


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(
    request: pytest.FixtureRequest,
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]:
    config = CONFIGS[request.param]()
    weights = random_weights(config, seed=5)
    vocab = config.vocab_size
    prompts = [
        [(i * 37 + k * k * 5 + 3) % vocab for k in range(n)] for i, n in enumerate((1, 9, 30, 75))
    ]
    expected = reference_greedy_tokens(_hf_model(config, weights), prompts, NEW_TOKENS)
    return config, weights, prompts, expected


Ref = tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]


def test_logits_match_transformers(reference: Ref) -> None:
    config, weights, prompts, _ = reference
    hf = _hf_model(config, weights)
    engine = tiny_llm_engine(config=config, weights=weights, cpu_native_decode=False)
    model = engine.runner.model
    ids = prompts[-1]
    shape = (len(ids), config.num_key_value_heads, config.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_hidden_layers)]
    meta = prefill_metadata(len(ids))
    with torch.inference_mode():
        ours = model.forward(torch.tensor(ids), meta, caches)
        want = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {"cpu_native_decode": False},
        {"cpu_native_decode": True},
        {"cpu_native_decode": True, "cpu_native_matmuls": False},
    ],
    ids=["torch", "native", "native-step-onednn-matmuls"],
)
def test_greedy_tokens_match_transformers(
    reference: Ref, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, weights, prompts, expected = reference
    native_steps = 0
    real_run = NativeDecoder.run

    def counting_run(self: NativeDecoder, *args: Any) -> torch.Tensor:
        nonlocal native_steps
        native_steps += 1
        return real_run(self, *args)

    monkeypatch.setattr(NativeDecoder, "run", counting_run)
    engine = tiny_llm_engine(config=config, weights=weights, max_num_batched_tokens=48, **options)
    assert greedy_tokens(engine, prompts, NEW_TOKENS) == expected
    # The C step (biases, head norms and unrotated layers in C) took the steps whenever it
    # was asked for.
    assert (native_steps > 0) == bool(options["cpu_native_decode"])
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("native", [False, True], ids=["torch", "native"])
def test_a_window_holds_through_prefix_hits_and_drafts(native: bool) -> None:
    # Cached prefixes longer than the window, then chunks that start past it, and drafted
    # tokens verified against windowed attention: still transformers' tokens.
    config = _mistral()
    weights = random_weights(config, seed=6)
    vocab = config.vocab_size
    shared = [(k * 11 + 5) % vocab for k in range(30)]
    prompts = [shared + [(i * 13 + k * 3) % vocab for k in range(4 + 5 * i)] for i in range(3)]
    # A repeating tail gives the n-gram proposer drafts to make.
    prompts.append(shared + [7, 8, 9] * 6)
    expected = reference_greedy_tokens(_hf_model(config, weights), prompts, NEW_TOKENS)
    engine = tiny_llm_engine(
        config=config,
        weights=weights,
        cpu_native_decode=native,
        max_num_batched_tokens=16,
        speculative_tokens=3,
        prompt_lookup_min=1,
    )
    got = [greedy_tokens(engine, [p], NEW_TOKENS)[0] for p in prompts]
    assert got == expected
    stats = engine.stats()
    assert stats.prefix_cache_hits > 0
    assert stats.draft_tokens_total > 0
    assert stats.kv_blocks_used == 0


@pytest.mark.parametrize("native", [False, True], ids=["torch", "native"])
def test_a_window_gives_back_the_blocks_behind_it(native: bool) -> None:
    # About 24 blocks of 4 slots: four sequences of 80 positions would need 80 blocks with every
    # block kept; behind an 8-position window each holds a handful, so none is preempted.
    config = _mistral()
    weights = random_weights(config, seed=7)
    vocab = config.vocab_size
    prompts = [[(i * 29 + k * 7 + 1) % vocab for k in range(20 + 3 * i)] for i in range(4)]
    new_tokens = 60
    expected = reference_greedy_tokens(_hf_model(config, weights), prompts, new_tokens)
    per_block = KVCache.bytes_per_block(config, 4, torch.float32)
    engine = tiny_llm_engine(
        config=config,
        weights=weights,
        cpu_native_decode=native,
        kv_cache_bytes=25 * per_block,
        max_num_batched_tokens=16,
    )
    bm = engine.scheduler.block_manager
    assert 20 <= bm.num_blocks <= 25
    held: list[int] = []
    real_step = engine.step

    def step() -> list[Any]:
        out = real_step()
        running = engine.scheduler.running
        held.append(max((len(s.block_table) - s.num_released for s in running), default=0))
        return out

    engine.step = step  # type: ignore[method-assign]
    assert greedy_tokens(engine, prompts, new_tokens) == expected
    assert engine.scheduler.num_preemptions == 0
    # The window (8) plus a chunk of up to 16 tokens, rounded out to whole blocks.
    assert 0 < max(held) <= (8 + 16) // 4 + 2
    assert bm.num_used_blocks == 0
    assert bm.num_free_blocks == bm.num_blocks
